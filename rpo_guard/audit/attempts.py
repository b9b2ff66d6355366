"""Counting allowed attempts to a number in the audit log, for the attempt caps.

On the per-call path, and only when a cap applies to the call and every
other rule allows it: one indexed count (``attempts_e164``) over the rows of
that number. The window is counted in calendar days of the rules' timezone:
the rows' ``at`` is ISO 8601 in that timezone, so its first ten characters
are the local date and ``at >= 'YYYY-MM-DD'`` holds exactly for the rows of
that day and after. Only ``ALLOW`` rows count: a refused attempt reached no
one, and neither did the test calls of simulate-call and selftest. Any failure to read raises (``sqlite3.Error``); the caller refuses the
call (BLOCK/error).
"""
from __future__ import annotations

import os
import sqlite3
from contextlib import nullcontext
from datetime import date

# The test calls of `rpo-guard simulate-call` (via 'simulate') and `rpo-guard selftest` (via
# '<front>-selftest') reached no one: they are not attempts (audit/query.py leaves them out too).
_COUNT = ("SELECT count(*) FROM attempts WHERE e164 = ? AND decision = 'ALLOW' AND at >= ? "
          "AND coalesce(via, '') != 'simulate' AND coalesce(via, '') NOT LIKE '%-selftest'")
_COUNT_BRAND = _COUNT + " AND brand = ?"


def count_allowed(conn: sqlite3.Connection, e164: str, brand: str | None, since: date) -> int:
    """Allowed attempts to ``e164`` from the day ``since`` on (every brand's when ``brand`` is None)."""
    if brand is None:
        return conn.execute(_COUNT, (e164, since.isoformat())).fetchone()[0]
    return conn.execute(_COUNT_BRAND, (e164, since.isoformat(), brand)).fetchone()[0]


class AttemptCounter:
    """The counts for :func:`rpo_guard.guard.check_call`, on one audit.db connection.

    The process AGI passes the connection of the AuditLog it will append to
    (it creates audit.db when missing) and that log's ``write_lock()`` as
    ``lock``: the count is made under the write lock, which the append of the
    call's row then commits, so two process AGIs checking the same number in
    the same instant count one after the other and cannot both pass at N-1
    (the lock is held only for calls under a cap, from the count to the
    append). ``rpo-guard check`` counts on a read-only connection, no lock.
    """

    def __init__(self, conn: sqlite3.Connection, lock=None):
        self.conn = conn
        self.lock = nullcontext() if lock is None else lock

    @classmethod
    def open_readonly(cls, path: str, busy_timeout_ms: int = 1000) -> "AttemptCounter":
        """A read-only connection to audit.db; a missing file raises."""
        if not os.path.isfile(path):
            raise sqlite3.OperationalError(f"{path}: audit log not found")
        uri = os.path.abspath(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
        conn = sqlite3.connect(f"file:{uri}?mode=ro", uri=True, timeout=busy_timeout_ms / 1000,
                               check_same_thread=False, isolation_level=None)
        return cls(conn)

    def count(self, e164: str, brand: str | None, since: date) -> int:
        return count_allowed(self.conn, e164, brand, since)

    def hold(self, e164: str, brand: str):
        return None

    def close(self) -> None:
        self.conn.close()


class FixedCounter:
    """Every count is ``n`` (``rpo-guard check --attempts N``: what if the number had N attempts)."""
    lock = nullcontext()

    def __init__(self, n: int):
        self.n = n

    def count(self, e164: str, brand: str | None, since: date) -> int:
        return self.n

    def hold(self, e164: str, brand: str):
        return None
