"""Two adjustments to asyncssh's SFTP server that real clients need.

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

asyncssh has no public hook for either, so both wrap entries of the handler table of
``SFTPServerHandler``. :func:`install` checks that the table still looks as expected, and
tests (a client killed mid-upload, an rclone upload) fail if an asyncssh upgrade changes it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from asyncssh import sftp as _sftp

_explicit_close: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ingest_explicit_close", default=False
)
_installed = False
_FXP_CLOSE: int = getattr(_sftp, "FXP_CLOSE")  # noqa: B009 - not re-exported by asyncssh
_FXP_WRITE: int = getattr(_sftp, "FXP_WRITE")  # noqa: B009


def closing_explicitly() -> bool:
    """True while asyncssh is serving a client's FXP_CLOSE request."""
    return _explicit_close.get()


def install() -> None:
    """Wrap the handlers once per process; idempotent."""
    global _installed
    if _installed:
        return
    handlers: dict[Any, Any] = _sftp.SFTPServerHandler._packet_handlers
    process_close = _expect(handlers, _FXP_CLOSE, "_process_close")
    process_write = _expect(handlers, _FXP_WRITE, "_process_write")

    async def close_marked_explicit(self: Any, packet: Any) -> None:
        token = _explicit_close.set(True)
        try:
            await process_close(self, packet)
        finally:
            _explicit_close.reset(token)

    async def write_ignoring_trailing_bytes(self: Any, packet: Any) -> Any:
        packet.check_end = _ignore_trailing_bytes
        return await process_write(self, packet)

    handlers[_FXP_CLOSE] = close_marked_explicit
    handlers[_FXP_WRITE] = write_ignoring_trailing_bytes
    _installed = True


def _ignore_trailing_bytes() -> None:
    return None


def _expect(
    handlers: dict[Any, Callable[..., Awaitable[Any]]], packet_type: int, name: str
) -> Callable[..., Awaitable[Any]]:
    handler = handlers.get(packet_type)
    if handler is None or getattr(handler, "__name__", "") != name:
        raise RuntimeError(
            f"asyncssh's SFTP server no longer dispatches packet type {packet_type} through "
            f"{name}; ingest/sftp/asyncssh_compat.py needs updating for this asyncssh"
        )
    return handler
