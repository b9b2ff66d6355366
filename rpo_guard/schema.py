"""The register database (rpo.db): schema, created with sqlite-utils.

Not imported on the per-call path (sqlite-utils costs ~100 ms to import);
the per-call reader is :mod:`rpo_guard.store`, on the stdlib driver.

Conventions: dates are ISO ``YYYY-MM-DD`` calendar dates in the rules'
timezone (Europe/Rome); a brand of ``''`` means "every brand" (a shared
consultation, a global do-not-contact entry, an opt-out from everyone).
"""
from __future__ import annotations

import os
from pathlib import Path

SCHEMA_VERSION = 1


def open_db(path: Path, mode: int = 0o640):
    """Open (creating if needed) the register database, schema applied."""
    import sqlite_utils

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    db = sqlite_utils.Database(path)
    db.conn.execute("PRAGMA busy_timeout = 5000")
    if new:
        os.chmod(path, mode)
    ensure_schema(db)
    return db


def ensure_schema(db) -> None:
    if db.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.conn.execute("PRAGMA journal_mode = WAL")
    version = db.conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"{db.conn} has schema {version}, newer than this rpo_guard ({SCHEMA_VERSION})")
    with db.conn:
        db["batches"].create({
            "id": int, "kind": str, "source_file": str, "sha256": str, "shape": str, "rows": int,
            "consulted_on": str, "brand": str, "valid_until": str,
            "imported_by": str, "imported_at": str,
            # sync (issue 3): outcome of every attempt, failures included, for `rpo-guard status`
            "status": str, "error": str, "registered": int, "encoding": str,
            "sent_file": str, "sent_sha256": str, "seconds": float,
        }, pk="id", not_null={"kind", "imported_at", "status"}, defaults={"brand": "", "status": "ok"},
            if_not_exists=True)
        db["batches"].create_index(["sha256", "kind"], if_not_exists=True)
        # WITHOUT ROWID: one b-tree keyed by (number, batch_id) instead of a table plus an index;
        # a lookup is one seek and a 10M-row import writes half the pages.
        db.conn.execute(
            "CREATE TABLE IF NOT EXISTS consultations ("
            " number TEXT NOT NULL, batch_id INTEGER NOT NULL REFERENCES batches(id),"
            " registered INTEGER NOT NULL, registration_date TEXT,"
            " PRIMARY KEY (number, batch_id)) WITHOUT ROWID")
        db["consents"].create({
            "id": int, "number": str, "brand": str, "kind": str,
            "given_at": str, "given_on": str, "ends_at": str, "ends_on": str,
            "channel": str, "evidence": str, "source_file": str, "source_line": int, "batch_id": int,
        }, pk="id", foreign_keys=[("batch_id", "batches", "id")],
            not_null={"number", "kind", "given_at", "given_on"}, defaults={"brand": ""}, if_not_exists=True)
        db["consents"].create_index(["number", "brand", "kind", "given_at"], unique=True, if_not_exists=True)
        db["dnc"].create({
            "id": int, "number": str, "brand": str, "reason": str,
            "added_by": str, "added_at": str, "removed_by": str, "removed_at": str,
            "source_file": str, "source_line": int, "batch_id": int,
        }, pk="id", not_null={"number", "added_at"}, defaults={"brand": ""}, if_not_exists=True)
        db["dnc"].create_index(["number", "brand"], if_not_exists=True)
        db.conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS dnc_active ON dnc(number, brand) WHERE removed_at IS NULL")
        db.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
