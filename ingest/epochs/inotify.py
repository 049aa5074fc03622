"""A minimal inotify(7) binding: one instance, one reader thread, any number of watches.

watchdog's observer starts a thread for every scheduled path (1,000 watches were 1,007
threads), and its recursive watches keep watching folders moved out of the tree. What
the epoch layer needs is small: non-recursive watches it adds and removes itself, events
as (watch, mask, name), and word of an overflow. Linux only; elsewhere :func:`available`
is False and the watcher polls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000  # the watch is gone (its folder was deleted, or it was removed)
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_CLOEXEC = 0o2000000

# Not modifications: every write of every upload would be an event (a 256 MiB upload is
# a thousand), and none is needed; closes and renames say when a writer is done.
FOLDER_EVENTS = IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len

_libc: ctypes.CDLL | None = None
_name = ctypes.util.find_library("c")
if _name is not None:
    _lib = ctypes.CDLL(_name, use_errno=True)
    if hasattr(_lib, "inotify_init1"):
        _libc = _lib
        _libc.inotify_init1.argtypes = [ctypes.c_int]
        _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]

# (watch descriptor, event mask, name in the watched folder); wd -1 with IN_Q_OVERFLOW
OnEvent = Callable[[int, int, bytes], None]


def available() -> bool:
    return _libc is not None


def _raise_errno(what: str, path: Path | None = None) -> None:
    code = ctypes.get_errno()
    if code == errno.ENOSPC:
        raise OSError(code, "the kernel's inotify watch limit (fs.inotify.max_user_watches)")
    raise OSError(code, f"{what}: {os.strerror(code)}", str(path) if path else None)


class Inotify:
    """One inotify instance. :meth:`add` and :meth:`remove` may be called from any thread;
    ``on_event`` runs in the reader thread."""

    def __init__(self, on_event: OnEvent) -> None:
        if _libc is None:
            raise OSError(errno.ENOSYS, "inotify is not available here")
        self._on_event = on_event
        fd = _libc.inotify_init1(IN_CLOEXEC)
        if fd < 0:
            _raise_errno("inotify_init1")
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="inotify", daemon=True)
        self._thread.start()

    def add(self, path: Path, mask: int) -> int:
        """A watch on the folder ``path`` (links not followed); its descriptor."""
        assert _libc is not None
        wd = int(_libc.inotify_add_watch(self._fd, os.fsencode(path), mask | IN_DONT_FOLLOW))
        if wd < 0:
            _raise_errno("inotify_add_watch", path)
        return wd

    def remove(self, wd: int) -> None:
        """Remove a watch; one that is gone already (its folder deleted) is no error."""
        assert _libc is not None
        if not self._closed:
            _libc.inotify_rm_watch(self._fd, wd)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout)
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                buffer = os.read(self._fd, 64 * 1024)
            except InterruptedError:
                continue
            offset = 0
            while offset + _HEADER.size <= len(buffer):
                wd, mask, _cookie, length = _HEADER.unpack_from(buffer, offset)
                start = offset + _HEADER.size
                name = buffer[start : start + length].rstrip(b"\0")
                offset = start + length
                self._on_event(wd, mask, name)
