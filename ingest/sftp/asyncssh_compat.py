"""Adjustments to asyncssh's SFTP server that real clients need.

1. Tell an explicit close from the clean-up of a dead session. asyncssh calls
   ``SFTPServer.close(file_obj)`` both when the client sends FXP_CLOSE and, for every
   handle still open, when the session ends for any reason. Only the first proves the
   client finished the file, and a half-written file must never pass for a finished
   upload. We wrap the FXP_CLOSE packet handler to set a context variable while it runs;
   :func:`closing_explicitly` reads it.

2. Accept FXP_WRITE packets with bytes after the data. pkg/sftp as shipped in rclone 1.60
   (Debian 12) sends the last chunk of a concurrent upload with its whole buffer behind
   the declared data; OpenSSH's sftp-server skips such trailing bytes, asyncssh rejects the
   packet and the upload fails. The declared data length is what gets written either way.

3. Report how the session ended, for the channel's exit status. asyncssh closes the
   ``sftp`` channel without an ``exit-status``, so OpenSSH's ssh exits 255 and its scp
   (SFTP protocol by default since OpenSSH 9.0) exits 1 after every successful transfer.
   ``SFTPServer.exit()`` runs at the right moment (after the session's handles are closed,
   before the channel is) but is not told why the session ended. We wrap the handler's
   ``_cleanup(exc)`` to set a context variable while it runs; :func:`session_exit_status`
   reads it: 0 after the client's EOF, 1 when the server ends the session for an error.
   We also wrap ``run`` so that an EOF before FXP_INIT (``ssh -s host sftp </dev/null``)
   ends the session like any other EOF: asyncssh lets that EOFError escape the session
   task, and its task reaper then drops the whole SSH connection without an exit status.

4. Do not offer ``ranges@asyncssh.com``. asyncssh serves it by calling ``seek(...,
   SEEK_DATA/SEEK_HOLE)`` on the object ``SFTPServer.open`` returned, with no
   ``SFTPServer`` method in between; ours is a descriptor record, so every ``get()`` and
   ``copy()`` of an asyncssh client failed ("'_Handle' object has no attribute 'seek'";
   ``handles.Handle`` was called ``_Handle`` then). Without the extension asyncssh clients
   copy the whole byte range, as they do against OpenSSH.

asyncssh has no public hook for any of these, so they wrap entries of the handler table
and methods of ``SFTPServerHandler``. :func:`install` checks that they still look as
expected, and tests (a client killed mid-upload, an rclone upload, scp's exit status, an
asyncssh download) fail if an asyncssh upgrade changes them.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asyncssh import sftp as _sftp

_explicit_close: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ingest_explicit_close", default=False
)
_session_error: contextvars.ContextVar[BaseException | None] = contextvars.ContextVar(
    "ingest_session_error", default=None
)
_installed = False
_FXP_CLOSE: int = getattr(_sftp, "FXP_CLOSE")  # noqa: B009 - not re-exported by asyncssh
# The SFTP protocol version served: asyncssh's own default (v3, what every client speaks).
SFTP_VERSION: int = getattr(_sftp, "MIN_SFTP_VERSION")  # noqa: B009
_FXP_WRITE: int = getattr(_sftp, "FXP_WRITE")  # noqa: B009
# Extensions asyncssh offers that cannot work here, with the handler that serves each.
# (hardlink@openssh.com stays: it works, and answers with hardlink_refused.)
_NOT_OFFERED = {b"ranges@asyncssh.com": "_process_ranges"}  # see 4. below


def closing_explicitly() -> bool:
    """True while asyncssh is serving a client's FXP_CLOSE request."""
    return _explicit_close.get()


def session_exit_status() -> int:
    """While a session ends (in ``SFTPServer.exit``): 0 if the client ended it, else 1."""
    return 0 if _session_error.get() is None else 1


def install() -> None:
    """Wrap the handlers once per process; idempotent."""
    global _installed
    if _installed:
        return
    server_handler: Any = _sftp.SFTPServerHandler
    handlers: dict[Any, Any] = server_handler._packet_handlers
    process_close = _expect(handlers, _FXP_CLOSE, "_process_close")
    process_write = _expect(handlers, _FXP_WRITE, "_process_write")
    for extension, handler in _NOT_OFFERED.items():
        _expect(handlers, extension, handler)
    cleanup = _expect(vars(server_handler), "_cleanup", "_cleanup")
    run = _expect(vars(server_handler), "run", "run")
    offered = server_handler._extensions
    extensions = [(name, data) for name, data in offered if name not in _NOT_OFFERED]
    if len(extensions) != len(offered) - len(_NOT_OFFERED):
        raise RuntimeError(
            "asyncssh's SFTP server no longer advertises "
            f"{', '.join(map(repr, _NOT_OFFERED))} as expected"
        )

    async def close_marked_explicit(self: Any, packet: Any) -> None:
        token = _explicit_close.set(True)
        try:
            await process_close(self, packet)
        finally:
            _explicit_close.reset(token)

    async def write_ignoring_trailing_bytes(self: Any, packet: Any) -> Any:
        packet.check_end = _ignore_trailing_bytes
        return await process_write(self, packet)

    async def cleanup_recording_error(self: Any, exc: Exception | None) -> None:
        token = _session_error.set(exc)
        try:
            await cleanup(self, exc)
        finally:
            _session_error.reset(token)

    async def run_ending_on_early_eof(self: Any) -> None:
        try:
            await run(self)
        except EOFError:
            if self._reader is None:  # already cleaned up: not the early EOF
                raise
            await self._cleanup(None)

    handlers[_FXP_CLOSE] = close_marked_explicit
    handlers[_FXP_WRITE] = write_ignoring_trailing_bytes
    for extension in _NOT_OFFERED:
        del handlers[extension]  # asked anyway: "operation unsupported", not a crash
    server_handler._extensions = extensions
    server_handler._cleanup = cleanup_recording_error
    server_handler.run = run_ending_on_early_eof
    _installed = True


def _ignore_trailing_bytes() -> None:
    return None


def _expect(
    handlers: Mapping[Any, Callable[..., Awaitable[Any]]], key: Any, name: str
) -> Callable[..., Awaitable[Any]]:
    handler = handlers.get(key)
    if handler is None or getattr(handler, "__name__", "") != name:
        raise RuntimeError(
            f"asyncssh's SFTP server no longer dispatches {key!r} through {name}; "
            f"ingest/sftp/asyncssh_compat.py needs updating for this asyncssh"
        )
    return handler
