"""The audit log of call attempts (audit.db): one row per attempt.

A separate SQLite file from the register: the register may be rebuilt, the
audit log is append-only and never replaced. Triggers refuse UPDATE and
DELETE. Written with the stdlib driver (this runs on every call); the schema
is plain SQL kept here so a call can create the file if it is missing.
"""
from __future__ import annotations

import json
import os
import sqlite3

AUDIT_SCHEMA_VERSION = 1

COLUMNS = ("at", "uniqueid", "channel", "callerid", "accountcode", "brand", "dialed", "e164",
           "decision", "reason", "basis", "detail", "latency_ms", "via")

SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,      -- ISO 8601 with UTC offset, the rules' timezone
    uniqueid    TEXT,               -- Asterisk agi_uniqueid
    channel     TEXT,
    callerid    TEXT,
    accountcode TEXT,
    brand       TEXT,
    dialed      TEXT,               -- the string the dialplan passed
    e164        TEXT,               -- NULL when it was not a valid number
    decision    TEXT NOT NULL CHECK (decision IN ('ALLOW', 'BLOCK')),
    reason      TEXT NOT NULL,
    basis       TEXT,               -- JSON: the consultation, consent or DNC entry that decided
    detail      TEXT,
    latency_ms  REAL,
    via         TEXT                -- agi | fastagi
);
CREATE INDEX IF NOT EXISTS attempts_at ON attempts(at);
CREATE INDEX IF NOT EXISTS attempts_e164 ON attempts(e164);
CREATE TRIGGER IF NOT EXISTS attempts_no_update BEFORE UPDATE ON attempts
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS attempts_no_delete BEFORE DELETE ON attempts
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class AuditLog:
    def __init__(self, path: str, busy_timeout_ms: int = 2000, file_mode: int = 0o640):
        path = os.fspath(path)
        new = not os.path.exists(path)
        self.conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000,
                                    isolation_level=None, check_same_thread=False)
        if new:
            try:
                os.chmod(path, file_mode)
            except OSError:
                pass
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version != AUDIT_SCHEMA_VERSION:
            self._create(version)

    def _create(self, version: int) -> None:
        if version > AUDIT_SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"audit schema {version} is newer than this rpo_guard")
        self.conn.execute("PRAGMA journal_mode = WAL")
        try:
            self.conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {AUDIT_SCHEMA_VERSION}; COMMIT;")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _values(row: dict) -> list:
        values = [row.get(c) for c in COLUMNS]
        values[COLUMNS.index("basis")] = json.dumps(row.get("basis") or {}, sort_keys=True)
        return values

    _INSERT = f"INSERT INTO attempts ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"

    def append(self, row: dict) -> int:
        """Record one attempt; returns its id."""
        return self.append_many([row])[0]

    def append_many(self, rows: list[dict]) -> list[int]:
        """Record several attempts in one transaction; returns their ids in order."""
        ids = []
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                ids.append(self.conn.execute(self._INSERT, self._values(row)).lastrowid)
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        return ids

    def close(self) -> None:
        self.conn.close()
