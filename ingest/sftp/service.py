"""The SSH side: listener, algorithms, authentication, limits and session bookkeeping.

Only the ``sftp`` subsystem is offered. asyncssh refuses shell, exec and pty requests when
no process or session factory is given; SCP, agent and X11 forwarding are switched off;
TCP/UNIX forwarding is refused by :class:`asyncssh.SSHServer`'s defaults, which
:class:`DistrictConnection` does not override.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncssh
from asyncssh.channel import SSHChannel
from asyncssh.stream import SSHServerStreamSession

from ingest.config import ServerConfig
from ingest.logging import get_logger
from ingest.sftp import asyncssh_compat
from ingest.sftp.admission import TRUSTED_FOR, TRUSTED_MAX, Admission, KnownSourceList
from ingest.sftp.authgate import AuthGate
from ingest.sftp.budget import BufferBudget
from ingest.sftp.defender import Defender, address_in, networks
from ingest.sftp.events import (
    SessionClosed,
    SFTPEventHandler,
    UploadJournal,
    UploadPolicy,
    UploadRegistry,
)
from ingest.sftp.fs import DistrictSFTPServer
from ingest.sftp.hostkeys import HostKey
from ingest.sftp.paths import Chroot
from ingest.sftp.runtime import SessionState, SFTPRuntime
from ingest.sftp.storage import Storage
from ingest.sftp.writer import lower_thread_priority

# Pinned algorithms; docs/security.md explains each choice. No SHA-1, no CBC, no DH groups.
# Key exchange: OpenSSH 10's sshd defaults that asyncssh has without liboqs (no sntrup761).
# The NIST curves are for clients without X25519: JCraft JSch 0.1.x (and its fork on Java 8
# without Bouncy Castle) and Ruby net-ssh without the x25519 gem.
KEX_ALGS = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
)
ENCRYPTION_ALGS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
# ETM first. The plain SHA-2 HMACs stay for libssh2 < 1.11 (curl on Debian 12, PHP and
# many embedded clients), which has no ETM; both are SHA-2 and only pair with CTR.
MAC_ALGS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
SIGNATURE_ALGS = (
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
# Host key signatures. asyncssh offers every signature a loaded key can make, SHA-1
# "ssh-rsa" for the RSA key included, and has no option to leave one out: each key pair's
# own list is narrowed to these (SFTPService.start).
HOST_KEY_ALGS = ("ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256")
SERVER_VERSION = "ingest"


class DistrictDirectory(Protocol):
    """What the SSH layer needs to know about districts (implemented by DistrictStore).

    Methods block (database, argon2); they are called from a worker thread.
    """

    def check_password(self, name: str, password: str) -> str | None: ...

    def authorized_keys(self, name: str) -> tuple[bool, list[str]]: ...

    def allowed_sources(self, name: str) -> tuple[str, ...]: ...

    def root(self, name: str) -> Path: ...


@dataclass
class _Limits:
    max_connections: int
    max_sessions_per_district: int
    max_auth_attempts: int
    kex_timeout: float
    max_channels_per_connection: int


class SFTPService:
    """Accepts SSH connections for districts and serves their SFTP sessions."""

    def __init__(
        self,
        settings: ServerConfig,
        host_keys: list[HostKey],
        districts: DistrictDirectory,
        *,
        events: SFTPEventHandler,
        policy: UploadPolicy,
        uploads: UploadRegistry,
        journal: UploadJournal,
        storage: Storage,
        defender: Defender,
        known_sources: KnownSourceList,
        own_link: Callable[[Path, os.stat_result], bool],
    ) -> None:
        asyncssh_compat.install()
        self.settings = settings
        self.host_keys = host_keys
        self.districts = districts
        self.limits = _Limits(
            settings.max_connections,
            settings.max_sessions_per_district,
            settings.max_auth_attempts,
            settings.kex_timeout,
            settings.max_channels_per_connection,
        )
        self.defender = defender
        self.known_sources = known_sources
        self.admission = Admission(
            settings.max_unauthenticated, settings.max_unauthenticated_per_source
        )
        # File I/O threads; sized for many concurrent sessions, not for CPU.
        self.runtime = SFTPRuntime(
            executor=ThreadPoolExecutor(max_workers=16, thread_name_prefix="sftp-io"),
            hash_executor=ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="sftp-hash", initializer=lower_thread_priority
            ),
            digest_executor=ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="sftp-digest", initializer=lower_thread_priority
            ),
            budget=BufferBudget(settings.max_buffered_upload_bytes),
            events=events,
            policy=policy,
            uploads=uploads,
            journal=journal,
            storage=storage,
            max_handles=settings.max_handles_per_session,
            own_link=own_link,
        )
        # argon2 is deliberately slow and memory-hungry: see authgate.py.
        self.auth = AuthGate(settings.max_password_checks_waiting)
        self.connections: set[DistrictConnection] = set()
        self.sessions_by_district: dict[str, int] = {}
        self.accepting = False
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self.log = get_logger("ingest.sftp")

    @property
    def uploads(self) -> UploadRegistry:
        return self.runtime.uploads

    async def start(self) -> int:
        """Listen on the configured address; returns the bound port (useful with port 0)."""
        since = time.time() - TRUSTED_FOR
        await asyncio.to_thread(self.known_sources.forget_before, since)
        self.admission.load(await asyncio.to_thread(self.known_sources.recent, since, TRUSTED_MAX))
        host_keys = asyncssh.load_keypairs([k.key for k in self.host_keys])
        for pair in host_keys:
            pair.host_key_algorithms = [
                algorithm
                for algorithm in pair.host_key_algorithms
                if algorithm.decode("ascii") in HOST_KEY_ALGS
            ]
        self._acceptor = await asyncssh.listen(
            self.settings.host,
            self.settings.port,
            server_factory=lambda: DistrictConnection(self),
            server_host_keys=host_keys,
            server_version=SERVER_VERSION,
            kex_algs=list(KEX_ALGS),
            encryption_algs=list(ENCRYPTION_ALGS),
            mac_algs=list(MAC_ALGS),
            signature_algs=list(SIGNATURE_ALGS),
            compression_algs=["none"],
            # No sftp_factory: DistrictConnection.session_requested counts the channels
            # and makes the SFTP session itself.
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=False,
            line_editor=False,  # the sftp subsystem is binary; no terminal is ever offered
            login_timeout=self.settings.login_timeout,
            keepalive_interval=self.settings.keepalive_interval or None,
            keepalive_count_max=3,
            reuse_address=True,
        )
        self.accepting = True
        return int(self._acceptor.get_port())

    def remember_source(self, source: str) -> None:
        """In the background: a failure only means the address is a stranger again after
        the next restart."""
        done = asyncio.get_running_loop().run_in_executor(
            self.runtime.executor, self.known_sources.remember, source, time.time()
        )

        def logged(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is not None:
                self.log.error("auth.remember_failed", error=repr(future.exception()))

        done.add_done_callback(logged)

    def make_sftp_server(self, chan: SSHChannel[bytes]) -> DistrictSFTPServer:
        assert isinstance(chan, asyncssh.SSHServerChannel)
        owner = chan.get_connection().get_owner()
        assert isinstance(owner, DistrictConnection) and owner.session is not None
        chroot = Chroot(self.districts.root(owner.session.district))
        return DistrictSFTPServer(chan, chroot, owner.session, self.runtime)

    @property
    def authenticated(self) -> int:
        return sum(self.sessions_by_district.values())

    def stop_accepting(self) -> None:
        """Close the listening socket; established sessions go on."""
        self.accepting = False
        self.runtime.draining = True
        if self._acceptor is not None:
            self._acceptor.close()

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for open uploads to finish; True if they all did."""
        try:
            await asyncio.wait_for(self.uploads.wait_empty(), timeout=grace)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Close every session and wait for them to go; then release the thread pools."""
        for conn in list(self.connections):
            conn.close()
        if self._acceptor is not None:
            await self._acceptor.wait_closed()
        waiters = [c.closed.wait() for c in list(self.connections)]
        if waiters:
            await asyncio.wait_for(asyncio.gather(*waiters), timeout=10)
        # Digests still running after the grace stop within a chunk (the epoch scan hashes
        # those files after the restart): a shutdown never waits for gigabytes of them.
        self.runtime.stop_hashing.set()
        # asyncssh closes the handles of a dead session in the session's own task, after
        # the connection is gone; wait for that so every upload gets its aborted event.
        await asyncio.wait_for(self.uploads.wait_empty(), timeout=10)
        self.runtime.executor.shutdown(wait=True)
        self.runtime.hash_executor.shutdown(wait=True)
        self.runtime.digest_executor.shutdown(wait=True)
        self.auth.shutdown()


class DistrictConnection(asyncssh.SSHServer):
    """One SSH connection: its authentication, limits and log context."""

    def __init__(self, service: SFTPService) -> None:
        self.service = service
        self.session_id = secrets.token_hex(6)
        self.conn: asyncssh.SSHServerConnection | None = None
        self.session: SessionState | None = None
        self.log: Any = get_logger("ingest.sftp", session_id=self.session_id)
        self.opened = time.monotonic()
        self.closed = asyncio.Event()
        self.source = "?"
        self.username = ""
        self.auth_failures = 0
        self.auth_method = ""
        self.refused = False
        self.channels = 0
        self._key_failed = False  # an offered key was refused (scored when it ends)
        self._source_allowed = True  # the district's allowed_sources, once it is named
        self._unknown_scored = False
        self._unauthenticated = False  # counted by the service's Admission
        self._attempt_lock = asyncio.Lock()  # password attempts, one at a time
        self._attempts: set[asyncio.Task[bool]] = set()  # referenced until they end
        self._gone = False
        self._kex_deadline: asyncio.TimerHandle | None = None

    # --- connection lifecycle ----------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.source = str(peer[0])
        self.log = self.log.bind(peer=f"{peer[0]}:{peer[1]}")
        service = self.service
        if not service.accepting:
            self._refuse("shutting_down", "Server is shutting down")
            return
        verdict = service.defender.refusal(self.source)
        if verdict is not None:
            self._refuse(verdict, "Connections from your address are refused for now")
            return
        refusal = service.admission.admit(self.source)
        if refusal is not None:
            if refusal == "max_unauthenticated_per_source":
                service.defender.offence(self.source, "limit", refusal)
            self._refuse(refusal, "Too many connections")
            return
        self._unauthenticated = True
        service.connections.add(self)
        self._kex_deadline = asyncio.get_running_loop().call_later(
            service.limits.kex_timeout, self._kex_too_slow
        )
        self.log.info("session.opened")

    def _kex_too_slow(self) -> None:
        self._kex_deadline = None
        self.service.defender.offence(self.source, "protocol", "kex_timeout")
        self._refuse("kex_timeout", "Key exchange not completed in time")

    def _kex_done(self) -> None:
        if self._kex_deadline is not None:
            self._kex_deadline.cancel()
            self._kex_deadline = None

    def _authenticated_or_gone(self) -> None:
        self._kex_done()
        if self._unauthenticated:
            self._unauthenticated = False
            self.service.admission.leave(self.source)

    def _refuse(self, reason: str, message: str) -> None:
        self.refused = True
        self.log.warning(
            "connection.refused",
            reason=reason,
            connections=self.service.authenticated,
            unauthenticated=self.service.admission.unauthenticated,
            **({"district": self.username} if self.username else {}),
        )
        assert self.conn is not None
        self.conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, message)

    def session_requested(self) -> SSHServerStreamSession[bytes] | bool:
        """A channel for the sftp subsystem (shell and exec are refused by the session),
        at most ``max_channels_per_connection`` at once."""
        limit = self.service.limits.max_channels_per_connection
        if self.channels >= limit:
            self.log.warning("limit.reached", limit="max_channels_per_connection", value=limit)
            return False
        self.channels += 1
        return _CountedSession(self._channel_closed, self.service.make_sftp_server)

    def _channel_closed(self) -> None:
        self.channels -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        service = self.service
        self._gone = True  # attempts still waiting their turn are not checked
        if self.session is None and self._key_failed:
            # Offered keys that were not the district's: once per connection (clients try
            # several keys before the right one; a login that succeeds costs nothing).
            service.defender.offence(self.source, "wrong_credentials", "unknown_key")
        self._authenticated_or_gone()
        if self in service.connections:
            service.connections.discard(self)
            session = self.session
            if session is not None:
                count = service.sessions_by_district.get(session.district, 1) - 1
                if count > 0:
                    service.sessions_by_district[session.district] = count
                else:
                    service.sessions_by_district.pop(session.district, None)
            if session is not None:
                service.runtime.events.handle_sftp_event(
                    SessionClosed(session.district, session.session_id)
                )
            self.log.info(
                "session.closed",
                duration=round(time.monotonic() - self.opened, 3),
                bytes_in=session.bytes_in if session else 0,
                bytes_out=session.bytes_out if session else 0,
                authenticated=session is not None,
                **({"error": str(exc)} if exc else {}),
            )
        self.closed.set()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    # --- authentication ------------------------------------------------------------------

    async def begin_auth(self, username: str) -> bool:
        self._kex_done()  # from here login_timeout applies
        self.username = username
        allowed = await self.service.auth.look_up(self.service.districts.allowed_sources, username)
        self._source_allowed = not allowed or address_in(self.source, networks(",".join(allowed)))
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        # asyncssh cancels this coroutine when the client sends its next attempt before
        # the answer. The attempt goes on all the same (shielded): it is checked, scored
        # and counted, and its hash keeps its place in the AuthGate's queue until done.
        attempt = asyncio.get_running_loop().create_task(self._password_attempt(username, password))
        self._attempts.add(attempt)
        attempt.add_done_callback(self._attempts.discard)
        return await asyncio.shield(attempt)

    async def _password_attempt(self, username: str, password: str) -> bool:
        """One at a time per connection: a client sending attempts without waiting for
        the answers gets them checked no faster than one that waits."""
        async with self._attempt_lock:
            if self._gone:
                return False
            return await self._check_password(username, password)

    async def _check_password(self, username: str, password: str) -> bool:
        service = self.service
        if self._banned_meanwhile():
            return False
        if not self._source_allowed:  # no hash for an address the district never uses
            failure: str | None = "source_not_allowed"
        else:
            failure = await service.auth.check_password(
                service.districts.check_password,
                username,
                password,
                known=service.admission.trusted(self.source),
            )
        if failure is None:
            self.auth_method = "password"
            return True
        self._auth_failed("password", failure)
        # Every failure alike (no hint which it was): the guesser waits, the loop does not.
        await asyncio.sleep(service.settings.auth_failure_delay)
        return False

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self._banned_meanwhile():
            return False
        if not self._source_allowed:
            self._auth_failed("publickey", "source_not_allowed")
            return False
        enabled, lines = await self.service.auth.look_up(
            self.service.districts.authorized_keys, username
        )
        offered = key.public_data
        known = any(asyncssh.import_public_key(line).public_data == offered for line in lines)
        if known and enabled:
            self.auth_method = "publickey"
            return True
        reason = "district_disabled" if known else "unknown_key" if lines else "no_keys"
        self._auth_failed("publickey", reason, fingerprint=key.get_fingerprint("sha256"))
        return False

    def _banned_meanwhile(self) -> bool:
        """The address was banned while this connection authenticates: no more attempts."""
        if self.service.defender.refusal(self.source) is None:
            return False
        self._refuse("banned", "Connections from your address are refused for now")
        return True

    def _auth_failed(self, method: str, reason: str, **fields: Any) -> None:
        defender = self.service.defender
        if reason == "unknown_district":
            if not self._unknown_scored:
                self._unknown_scored = True
                defender.offence(self.source, "unknown_district", reason)
        elif reason == "source_not_allowed" or (
            # Not server_busy: a district with the right password, from an address the
            # server does not know (yet), gets it during a flood and must not be banned.
            method == "password" and reason in ("wrong_password", "password_not_set")
        ):
            defender.offence(self.source, "wrong_credentials", reason)
        elif reason in ("unknown_key", "no_keys"):
            self._key_failed = True
        self.auth_failures += 1
        self.log.warning(
            "auth.failed",
            district=self.username,
            method=method,
            reason=reason,
            attempt=self.auth_failures,
            **fields,
        )
        if self.auth_failures >= self.service.limits.max_auth_attempts and self.conn:
            self.log.warning(
                "connection.refused", reason="max_auth_attempts", district=self.username
            )
            self.conn.disconnect(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many authentication failures"
            )

    def auth_completed(self) -> None:
        service = self.service
        district = self.username
        self._authenticated_or_gone()
        if service.admission.authenticated(self.source):
            service.remember_source(self.source)
        active = service.sessions_by_district.get(district, 0)
        if service.authenticated >= service.limits.max_connections:
            self._refuse("max_connections", "Too many connections")
            return
        if active >= service.limits.max_sessions_per_district:
            self._refuse(
                "max_sessions_per_district",
                f"Too many sessions for {district}: at most "
                f"{service.limits.max_sessions_per_district} at once",
            )
            return
        service.sessions_by_district[district] = active + 1
        self.log = self.log.bind(district=district)
        self.session = SessionState(district, self.session_id, self.log)
        self.log.info("auth.succeeded", method=self.auth_method)


class _CountedSession(SSHServerStreamSession[bytes]):
    """asyncssh's own session for the sftp subsystem, telling its connection when the
    channel is gone (asyncssh makes it itself when given an ``sftp_factory``, which leaves
    no way to count channels; the asyncssh pin in pyproject.toml guards the class)."""

    def __init__(
        self,
        closed: Callable[[], None],
        sftp_factory: Callable[[SSHChannel[bytes]], asyncssh.SFTPServer],
    ) -> None:
        super().__init__(None, sftp_factory, asyncssh_compat.SFTP_VERSION, False)
        self._closed: Callable[[], None] | None = closed

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed is not None:
            self._closed()
            self._closed = None
        super().connection_lost(exc)
