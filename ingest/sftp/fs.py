"""The SFTP file system a district sees: chrooted, policed, tracked, and off the event loop.

Every request is checked by :class:`~ingest.sftp.paths.Chroot`; every blocking file
system call runs in a worker thread (writes through :class:`~ingest.sftp.writer.FileWriter`);
every handle opened for writing is registered in the
:class:`~ingest.sftp.events.UploadRegistry` and recorded in the
:class:`~ingest.sftp.events.UploadJournal`, and ends in exactly one ``UploadFinished``
(client closed it) or ``UploadAborted`` event.

A change inside ``/upload/`` passes the upload policy and is registered in the same step
on the event loop, before its worker-thread hop touches anything: the epoch layer freezes
an epoch on the loop too, so a change either was registered before the freeze (and the
freeze waits for it) or is refused by the frozen policy. There is no window in between.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
from asyncssh import SFTPAttrs, SFTPName, SFTPVFSAttrs

from ingest.logging import get_logger
from ingest.sftp import asyncssh_compat
from ingest.sftp.events import (
    OpenUpload,
    PathRenamed,
    RequestRefused,
    UploadAborted,
    UploadFinished,
    UploadStarted,
)
from ingest.sftp.handles import (
    Handle,
    best_effort,
    digest_and_close,
    finish_writes,
    open_one_name,
)
from ingest.sftp.paths import UPLOAD, Access, Chroot, Denied, Resolved
from ingest.sftp.runtime import SessionState, SFTPRuntime
from ingest.sftp.storage import Refusal
from ingest.sftp.writer import DigestAborted, FileWriter

DIR_MODE = 0o750
DISTRICT_ID = 1000  # the uid and gid every file shows (the server's own are not shown)
_WRITE_FLAGS = asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC

T = TypeVar("T")
log = get_logger("ingest.sftp")


class _JournalFailed(Exception):
    """The upload journal could not record an upload; the upload is refused."""


class DistrictSFTPServer(asyncssh.SFTPServer):
    """One SFTP session of one district."""

    def __init__(
        self,
        chan: asyncssh.SSHServerChannel[bytes],
        chroot: Chroot,
        session: SessionState,
        runtime: SFTPRuntime,
    ) -> None:
        super().__init__(chan)
        self._paths = chroot
        self._session = session
        self._runtime = runtime
        self._log = session.log

    # --- helpers -------------------------------------------------------------------

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._runtime.executor, fn, *args)

    async def _on_path(
        self, operation: str, path: bytes, access: Access, fn: Callable[[Path], T]
    ) -> tuple[Resolved, T]:
        """Resolve ``path`` and run ``fn`` on the real path, both in one worker-thread hop.

        Resolution itself touches the file system (the symlink check), so it belongs off
        the event loop with the operation it guards. A change (``Access.WRITE``) is
        admitted first (:meth:`_admit`) and stays registered until it is done.
        """

        def work() -> tuple[Resolved, T]:
            resolved = self._paths.resolve(path, access)
            return resolved, fn(resolved.real)

        changes = await self._admit((operation, path)) if access is Access.WRITE else []
        try:
            return await self._io(work)
        except Denied as denial:
            raise self._deny(operation, path, denial) from None
        finally:
            for change in changes:
                self._runtime.uploads.discard(change)

    async def _admit(self, *requests: tuple[str, bytes]) -> list[OpenUpload]:
        """Admit a change at each (operation, path): once no other path operation at,
        above or below these paths is running, the upload policy's check and the
        registration of every change in one step on the event loop (pure and in memory,
        before any file I/O). Refusals are raised as the client's SFTP error. The caller
        discards the registrations when its change is over (an open handle: when it
        ends; it marks itself settled once opened)."""
        uploads = self._runtime.uploads
        targets = []
        for operation, path in requests:
            try:
                virtual = self._paths.virtual(path)
            except Denied as denial:
                raise self._deny(operation, path, denial) from None
            targets.append((operation, path, virtual, self._paths.real(virtual)))
        while (running := uploads.unsettled(*(t[3] for t in targets))) is not None:
            await running.settled.wait()
        for operation, path, virtual, _ in targets:
            try:
                self._runtime.policy.check(self._session.district, operation, virtual)
            except Denied as denial:
                raise self._deny(operation, path, denial) from None
        changes = [
            OpenUpload(self._session.district, real, self._session.session_id)
            for *_, real in targets
        ]
        for change in changes:
            uploads.add(change)
        return changes

    def _refuse(self, refusal: Refusal, path: bytes | str) -> asyncssh.SFTPError:
        """A storage limit: logged, and told to the client as a failure with its reason."""
        shown = path.decode("utf-8", "replace") if isinstance(path, bytes) else path
        self._log.warning("upload.refused", code=refusal.code, path=shown, message=refusal.message)
        self._tell(shown, refusal.code, refusal.message)
        return asyncssh.SFTPFailure(refusal.message)

    def _deny(self, operation: str, path: bytes | str, denial: Denied) -> asyncssh.SFTPError:
        shown = path.decode("utf-8", "replace") if isinstance(path, bytes) else path
        self._log.warning(
            "sftp.denied",
            operation=operation,
            path=shown,
            reason=denial.reason,
            message=denial.message,
        )
        self._tell(shown, denial.reason, denial.message)
        return asyncssh.SFTPPermissionDenied(denial.message)

    def _tell(self, path: str, code: str, message: str) -> None:
        """Clients like OpenSSH's sftp show only "Permission denied": the layer above
        tells the district the whole message."""
        self._runtime.events.handle_sftp_event(
            RequestRefused(self._session.district, path, code, message)
        )

    # --- files -----------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> Handle:
        session = self._session
        if session.handles >= self._runtime.max_handles:
            self._log.warning(
                "limit.reached", limit="max_handles_per_session", value=self._runtime.max_handles
            )
            raise asyncssh.SFTPFailure(
                f"too many open files: at most {self._runtime.max_handles} at once per "
                "connection; close files before opening more"
            )
        session.handles += 1  # taken back by close(), or below if the open fails
        try:
            return await self._open(path, pflags)
        except BaseException:
            session.handles -= 1
            raise

    async def _open(self, path: bytes, pflags: int) -> Handle:
        writing = bool(pflags & _WRITE_FLAGS)
        if writing and self._runtime.draining:
            raise self._deny(
                "open",
                path,
                Denied("shutting_down", "the server is restarting; retry the upload in a minute"),
            )
        if writing and self._runtime.uploads_refused is not None:
            raise self._deny("open", path, self._runtime.uploads_refused)
        # Write handles are opened read-write whatever the client asked: the server reads
        # the file back to hash it when the writes were not one sequential stream.
        flags = os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_RDWR if writing else os.O_RDONLY)
        if pflags & asyncssh.FXF_CREAT:
            flags |= os.O_CREAT
        if pflags & asyncssh.FXF_TRUNC:
            flags |= os.O_TRUNC
        if pflags & asyncssh.FXF_EXCL:
            flags |= os.O_EXCL
        own_link = self._runtime.own_link
        if not writing:
            resolved, fd = await self._on_path(
                "open", path, Access.READ, lambda real: open_one_name(real, flags, own_link)
            )
            return Handle(fd, resolved)
        (upload,) = await self._admit(("open", path))
        journal, session, storage = self._runtime.journal, self._session, self._runtime.storage
        upload_root = self._paths.real(UPLOAD)

        def work() -> tuple[Resolved, int, int, int]:
            # The journal row first: from then on a crash leaves the file flagged as not
            # whole, whatever happens to it below.
            resolved = self._paths.resolve(path, Access.WRITE)
            storage.admit_open(session.district, upload_root, resolved.real)
            try:
                intent = journal.begin(session.district, resolved.real, session.session_id)
            except Exception as exc:
                raise _JournalFailed(repr(exc)) from exc
            try:
                fd = open_one_name(resolved.real, flags, own_link)
            except BaseException:
                best_effort(journal.forget, intent)
                raise
            return resolved, intent, fd, os.fstat(fd).st_size

        try:
            resolved, upload.intent, fd, size = await self._io(work)
        except BaseException as exc:
            self._runtime.uploads.discard(upload)
            if isinstance(exc, Denied):
                raise self._deny("open", path, exc) from None
            if isinstance(exc, Refusal):
                raise self._refuse(exc, path) from None
            if isinstance(exc, _JournalFailed):
                self._log.error(
                    "upload.journal_failed",
                    path=self._paths.to_virtual(upload.real_path),
                    error=str(exc),
                )
                raise asyncssh.SFTPFailure(
                    "the server cannot record this upload right now; retry in a few minutes"
                ) from None
            raise
        upload.settled.set()
        append_at = size if pflags & asyncssh.FXF_APPEND else None
        handle = Handle(fd, resolved, upload=upload, append_at=append_at, high=size)
        handle.writer = FileWriter(
            fd,
            self._runtime.executor,
            self._runtime.hash_executor,
            admit=storage.check_free_space,
            budget=self._runtime.budget,
            abort_hashing=self._runtime.stop_hashing,
        )
        self._log.info("upload.started", path=resolved.virtual)
        self._runtime.events.handle_sftp_event(
            UploadStarted(
                self._session.district, resolved.virtual, resolved.real, self._session.session_id
            )
        )
        return handle

    async def close(self, file_obj: object) -> None:
        handle = _as_handle(file_obj)
        self._session.handles -= 1
        explicit = asyncssh_compat.closing_explicitly()
        writer, upload = handle.writer, handle.upload
        if writer is None or upload is None:
            await self._io(os.close, handle.fd)
            return
        duration = round(time.monotonic() - handle.opened, 6)
        virtual = self._paths.to_virtual(upload.real_path)
        await writer.wait_idle()
        # Queued data is written on abort too: a partial file is what a client resumes
        # from. Small files are hashed and closed in the same worker-thread hop.
        # Parts written through several handles: the last one to close judges the gaps.
        last_writer = not self._runtime.uploads.others_writing(upload)
        end = await self._io(
            finish_writes, writer, explicit, self._runtime.journal, upload, last_writer
        )
        if isinstance(end.error, Refusal) and end.error.code == "file_has_holes":
            self._upload_aborted(upload, virtual, writer, duration, end.error.code, True)
            raise self._refuse(end.error, virtual)
        if end.error is not None:
            written = isinstance(end.error, OSError)
            reason = "write_error" if written else "journal_error"
            self._upload_aborted(upload, virtual, writer, duration, reason, end.same, end.error)
            if not explicit:
                return  # session clean-up: nobody is listening
            if written:
                raise end.error
            raise asyncssh.SFTPFailure(
                "the server could not record this upload as complete; upload the file again"
            )
        if not end.same:
            # Replaced or removed while this handle was open: what it wrote is gone, and
            # its end says nothing about the file now at its path.
            self._upload_aborted(upload, virtual, writer, duration, "file_replaced", False)
        elif not explicit:
            reason = "server_shutdown" if self._runtime.draining else "session_closed"
            self._upload_aborted(upload, virtual, writer, duration, reason, True)
        elif end.unannounced:
            self._upload_aborted(upload, virtual, writer, duration, "server_shutdown", False)
        elif end.digest is not None:
            self._upload_finished(upload, virtual, writer, duration, end.size, end.digest)
        else:
            # Every byte is on disk: answer the client now and let the digest catch up in
            # the background; the file stays registered as open until it is announced.
            task = asyncio.create_task(
                self._finish_digest(upload, virtual, writer, duration, end.size)
            )
            self._runtime.background.add(task)
            task.add_done_callback(self._runtime.background.discard)

    async def _finish_digest(
        self, upload: OpenUpload, virtual: str, writer: FileWriter, duration: float, size: int
    ) -> None:
        try:
            digest = await asyncio.get_running_loop().run_in_executor(
                self._runtime.digest_executor, digest_and_close, writer, size
            )
        except DigestAborted:
            # The file is whole (the journal says so) but not announced: the epoch scan
            # hashes it after the restart.
            self._upload_aborted(upload, virtual, writer, duration, "server_shutdown", False)
            return
        except OSError as error:
            self._upload_aborted(upload, virtual, writer, duration, "read_error", True, error)
            return
        self._upload_finished(upload, virtual, writer, duration, size, digest)

    def _upload_finished(
        self,
        upload: OpenUpload,
        virtual: str,
        writer: FileWriter,
        duration: float,
        size: int,
        digest: str,
    ) -> None:
        # The registry first, so a listener asking "is anything still open, is this file
        # whole?" on this event gets the right answer.
        self._runtime.uploads.discard(upload)
        if upload.may_clear:  # nothing cut this file off since this handle opened it
            self._runtime.uploads.clear_incomplete(upload.real_path)
        self._log.info(
            "upload.finished",
            path=virtual,
            bytes=writer.bytes_written,
            size=size,
            duration=duration,
            sha256=digest,
        )
        self._runtime.events.handle_sftp_event(
            UploadFinished(
                upload.district,
                virtual,
                upload.real_path,
                upload.session_id,
                writer.bytes_written,
                size,
                duration,
                digest,
            )
        )

    def _upload_aborted(
        self,
        upload: OpenUpload,
        virtual: str,
        writer: FileWriter,
        duration: float,
        reason: str,
        cut: bool,
        error: Exception | None = None,
    ) -> None:
        """``cut``: the file at the handle's path is the one it wrote, now not whole."""
        self._runtime.uploads.discard(upload)
        if cut:
            self._runtime.uploads.mark_incomplete(upload.real_path)
        self._log.warning(
            "upload.aborted",
            path=virtual,
            bytes=writer.bytes_written,
            duration=duration,
            reason=reason,
            **({"error": str(error)} if error else {}),
        )
        self._runtime.events.handle_sftp_event(
            UploadAborted(
                upload.district,
                virtual,
                upload.real_path,
                upload.session_id,
                writer.bytes_written,
                duration,
                reason,
            )
        )

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        handle = _as_handle(file_obj)
        if handle.writer is not None:
            await handle.writer.flush()
        data = await self._io(os.pread, handle.fd, size, offset)
        self._session.bytes_out += len(data)
        return data

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        handle = _as_handle(file_obj)
        if handle.writer is None:
            raise asyncssh.SFTPPermissionDenied("file was opened for reading only")
        if handle.append_at is not None:
            offset = handle.append_at
            handle.append_at += len(data)
        end = offset + len(data)
        try:
            if end > handle.high:
                self._runtime.storage.check_size(end)
                self._runtime.storage.grow(self._session.district, end - handle.high)
                handle.high = end
            self._session.bytes_in += len(data)
            if await handle.writer.write(offset, data) and not self._session.budget_waited:
                self._session.budget_waited = True  # once per connection: it is backpressure
                self._log.warning(
                    "limit.reached",
                    limit="max_buffered_upload_bytes",
                    value=self._runtime.budget.limit,
                )
        except Refusal as refusal:
            handle.writer.fail(refusal)  # the close fails too: the file is not whole
            raise self._refuse(refusal, handle.resolved.virtual) from None
        return len(data)

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        handle = _as_handle(file_obj)
        if handle.writer is not None:
            await handle.writer.flush()
        return self._attrs(await self._io(os.fstat, handle.fd))

    async def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        # Clients (WinSCP, FileZilla, rclone) set times and permissions after an upload;
        # they are accepted and ignored. Only a size change (truncate) is applied.
        handle = _as_handle(file_obj)
        if attrs.size is None:
            return
        if handle.writer is None:
            raise asyncssh.SFTPPermissionDenied("file was opened for reading only")
        try:
            self._runtime.storage.check_size(attrs.size)
            if attrs.size > handle.high:
                self._runtime.storage.grow(self._session.district, attrs.size - handle.high)
        except Refusal as refusal:
            raise self._refuse(refusal, handle.resolved.virtual) from None
        handle.high = attrs.size
        await handle.writer.flush()
        await self._io(os.ftruncate, handle.fd, attrs.size)

    async def fsync(self, file_obj: object) -> None:
        handle = _as_handle(file_obj)
        if handle.writer is not None:
            await handle.writer.flush()
        await self._io(os.fsync, handle.fd)

    # --- paths -----------------------------------------------------------------------

    async def stat(self, path: bytes) -> SFTPAttrs:
        # Paths through links are refused, so stat never has a link to follow.
        return self._attrs((await self._on_path("stat", path, Access.READ, os.lstat))[1])

    async def lstat(self, path: bytes) -> SFTPAttrs:
        return self._attrs((await self._on_path("lstat", path, Access.READ, os.lstat))[1])

    async def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        # Times, permissions and ownership are accepted and ignored (see fsetstat); a
        # missing path is still an error, and a size change is a truncate.
        if attrs.size is None:
            await self._on_path("setstat", path, Access.READ, os.lstat)
            return
        size = attrs.size
        try:
            self._runtime.storage.check_size(size)
        except Refusal as refusal:
            raise self._refuse(refusal, path) from None
        await self._on_path("setstat", path, Access.WRITE, lambda p: os.truncate(p, size))

    async def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        await self.setstat(path, attrs)

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        _, entries = await self._on_path("opendir", path, Access.READ, _list_dir)
        for name, stat_result in entries:
            yield SFTPName(name, attrs=self._attrs(stat_result))

    async def remove(self, path: bytes) -> None:
        uploads, journal = self._runtime.uploads, self._runtime.journal
        (change,) = await self._admit(("remove", path))
        cut = uploads.is_incomplete(change.real_path)

        def work() -> Resolved:
            resolved = self._paths.resolve(path, Access.WRITE)
            os.unlink(resolved.real)
            if cut:
                best_effort(journal.removed, resolved.real)
            return resolved

        try:
            resolved = await self._io(work)
            if cut:
                uploads.clear_incomplete(resolved.real)
        except Denied as denial:
            raise self._deny("remove", path, denial) from None
        finally:
            uploads.discard(change)

    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        # Clients create every directory on the way (curl --ftp-create-dirs, lftp mirror):
        # an existing one is "already exists", not a policy refusal of /upload itself.
        _, exists = await self._on_path("mkdir", path, Access.READ, os.path.lexists)
        if exists:
            raise asyncssh.SFTPFileAlreadyExists("directory already exists")
        upload_root, storage = self._paths.real(UPLOAD), self._runtime.storage

        def make(real: Path) -> None:
            storage.admit_mkdir(upload_root)
            os.mkdir(real, DIR_MODE)

        try:
            await self._on_path("mkdir", path, Access.WRITE, make)
        except Refusal as refusal:
            raise self._refuse(refusal, path) from None

    async def rmdir(self, path: bytes) -> None:
        await self._on_path("rmdir", path, Access.WRITE, os.rmdir)

    async def realpath(self, path: bytes) -> bytes:
        try:
            return self._paths.virtual(path).encode("utf-8")
        except Denied as denial:
            raise self._deny("realpath", path, denial) from None

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, replace=False)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, replace=True)

    async def _rename(self, oldpath: bytes, newpath: bytes, replace: bool) -> None:
        # What moves decides the rules for its new name: a directory arriving somewhere is
        # judged like a mkdir there (no epoch inside an epoch, no name from the future).
        _, is_dir = await self._on_path("rename_source", oldpath, Access.READ, _is_dir)
        target_operation = "rename_target_dir" if is_dir else "rename_target"
        uploads, journal = self._runtime.uploads, self._runtime.journal
        changes = await self._admit(("rename_source", oldpath), (target_operation, newpath))
        try:
            # Only a handle open for writing or a file cut off needs the journal to follow.
            tracked = uploads.involves(changes[0].real_path, changes[1].real_path)

            def work() -> tuple[Resolved, Resolved]:
                old = self._paths.resolve(oldpath, Access.WRITE)
                new = self._paths.resolve(newpath, Access.WRITE)
                if _is_dir(old.real) != is_dir:
                    raise FileNotFoundError(2, "changed while being renamed", str(old.real))
                try:
                    copies = journal.rename_begin(old.real, new.real) if tracked else []
                except Exception as exc:
                    raise _JournalFailed(repr(exc)) from exc
                try:
                    _rename(old.real, new.real, replace)
                except BaseException:
                    if tracked:
                        best_effort(journal.rename_end, old.real, new.real, copies, False)
                    raise
                if tracked:
                    best_effort(journal.rename_end, old.real, new.real, copies, True)
                return old, new

            try:
                old, new = await self._io(work)
            except Denied as denial:
                raise self._deny("rename_source", oldpath, denial) from None
            except _JournalFailed as failure:
                self._log.error("upload.journal_failed", operation="rename", error=str(failure))
                raise asyncssh.SFTPFailure(
                    "the server cannot record this rename right now; retry in a few minutes"
                ) from None
            # Still inside the registered change: nobody sees the new name untracked.
            uploads.renamed(old.real, new.real)
        finally:
            for change in changes:
                uploads.discard(change)
        self._log.info("sftp.renamed", old_path=old.virtual, new_path=new.virtual)
        self._runtime.events.handle_sftp_event(
            PathRenamed(
                self._session.district,
                old.virtual,
                new.virtual,
                old.real,
                new.real,
                self._session.session_id,
            )
        )

    async def readlink(self, path: bytes) -> bytes:
        # Districts cannot create links; any link below the root was planted and its
        # target is none of the district's business.
        await self._on_path("readlink", path, Access.READ, os.lstat)
        raise asyncssh.SFTPInvalidParameter("not a symbolic link")

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise self._deny(
            "symlink",
            newpath,
            Denied("symlink_refused", "symbolic links are not supported on this server"),
        )

    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise self._deny(
            "link",
            newpath,
            Denied("hardlink_refused", "hard links are not supported on this server"),
        )

    async def statvfs(self, path: bytes) -> SFTPVFSAttrs:
        await self._on_path("statvfs", path, Access.READ, os.lstat)  # it must be reachable
        return await self._space()

    async def fstatvfs(self, file_obj: object) -> SFTPVFSAttrs:
        return await self._space()

    async def _space(self) -> SFTPVFSAttrs:
        """The district's own quota and what is left of it, not the host's disk (whose
        size, use and the other districts' share are none of its business)."""
        space = await self._io(
            self._runtime.storage.space, self._session.district, self._paths.real(UPLOAD)
        )
        block = 4096
        return SFTPVFSAttrs(
            bsize=block,
            frsize=block,
            blocks=space.quota_bytes // block,
            bfree=space.free_bytes // block,
            bavail=space.free_bytes // block,
            files=space.quota_files,
            ffree=space.free_files,
            favail=space.free_files,
            fsid=0,
            flag=0,
            namemax=255,
        )

    # --- owners ----------------------------------------------------------------------

    def _attrs(self, st: os.stat_result) -> SFTPAttrs:
        """A file's attributes as the district sees them: everything in its folder is its
        own, owned by the district (the server's account names and ids are none of its
        business)."""
        attrs = SFTPAttrs.from_local(st)
        attrs.uid = attrs.gid = DISTRICT_ID
        attrs.owner = attrs.group = self._session.district
        return attrs

    def format_user(self, uid: int | None) -> str:
        return self._session.district  # the owner column of a listing (ls -l)

    def format_group(self, gid: int | None) -> str:
        return self._session.district

    # --- session ---------------------------------------------------------------------

    def exit(self) -> None:
        # asyncssh calls this once the session's handles are closed, just before it closes
        # the channel. Report an exit status like OpenSSH's sftp-server: without one,
        # ssh exits 255 and scp 1 even after a successful transfer.
        self.channel.exit(asyncssh_compat.session_exit_status())


def _is_dir(path: Path) -> bool:
    return stat.S_ISDIR(os.lstat(path).st_mode)


def _as_handle(file_obj: object) -> Handle:
    assert isinstance(file_obj, Handle)
    return file_obj


def _list_dir(path: os.PathLike[str]) -> list[tuple[bytes, os.stat_result]]:
    entries = [(b".", os.lstat(path)), (b"..", os.lstat(path))]
    with os.scandir(path) as it:
        for entry in it:
            try:
                entries.append((os.fsencode(entry.name), entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue  # removed while listing
    return entries


def _rename(old: os.PathLike[str], new: os.PathLike[str], replace: bool) -> None:
    if not replace and os.path.lexists(new):
        # SFTP v3 rename must not overwrite; clients that want that use posix-rename.
        raise FileExistsError(17, "target exists", os.fspath(new))
    os.rename(old, new)
