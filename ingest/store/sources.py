"""Client addresses that logged in successfully, in the state database so that a restart
does not forget them: the admission limits let known addresses through a flood of
strangers (ingest/sftp/admission.py), and after a restart in the middle of one, every
district would otherwise be a stranger again. Blocking; worker threads.
"""

from __future__ import annotations

from ingest.store.db import Database


class KnownSources:
    def __init__(self, database: Database) -> None:
        self.database = database

    def recent(self, since: float, limit: int) -> list[tuple[str, float]]:
        """(address, last login) of logins since ``since``, the newest ``limit``, oldest
        first."""
        with self.database.read() as conn:
            rows = conn.execute(
                "SELECT address, last_login FROM known_sources WHERE last_login >= ?"
                " ORDER BY last_login DESC LIMIT ?",
                (since, limit),
            ).fetchall()
        return [(r["address"], r["last_login"]) for r in reversed(rows)]

    def remember(self, address: str, at: float) -> None:
        with self.database.connect() as conn:
            conn.execute(
                "INSERT INTO known_sources (address, last_login) VALUES (?, ?)"
                " ON CONFLICT (address) DO UPDATE SET last_login = excluded.last_login",
                (address, at),
            )

    def forget_before(self, before: float) -> None:
        with self.database.connect() as conn:
            conn.execute("DELETE FROM known_sources WHERE last_login < ?", (before,))
