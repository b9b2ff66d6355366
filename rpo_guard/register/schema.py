"""The register database (rpo.db): schema, created with sqlite-utils.

Not imported on the per-call path (sqlite-utils costs ~100 ms to import);
the per-call reader is :mod:`rpo_guard.register.store`, on the stdlib driver.

Conventions: dates are ISO ``YYYY-MM-DD`` calendar dates in the rules'
timezone (Europe/Rome); a brand of ``''`` means "every brand" (a shared
consultation, a global do-not-contact entry, an opt-out from everyone, a
caller ID declared for every brand).
"""
from __future__ import annotations

import os

SCHEMA_VERSION = 2

# Upgrade steps of rpo.db: the version a step reaches -> (what it does, SQL statements).
# Version 1 is the first released schema (the block in ensure_schema, frozen in
# tests/data/rpo_v1.sql). A fresh database runs the v1 block and then these same
# statements, so a fresh and a migrated database hold the same objects.
# Never edit a released step: add a new one.
STEPS: dict[int, tuple[str, tuple[str, ...]]] = {
    2: ("schema_migrations (what was applied, when, by whom, with which rpo_guard); "
        "index consents(brand, kind) for `status` and the per-brand counts",
        ("CREATE TABLE IF NOT EXISTS schema_migrations ("
         " version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL, applied_by TEXT NOT NULL,"
         " rpo_guard TEXT NOT NULL, description TEXT NOT NULL)",
         "CREATE INDEX IF NOT EXISTS consents_brand ON consents(brand, kind)")),
}


class SchemaError(RuntimeError):
    pass


def open_db(path, mode: int = 0o640, group: str = ""):
    """Open (creating if needed) the register database, schema applied.

    A new file is created at SCHEMA_VERSION with ``mode`` and ``group`` (see
    rpo_guard.perms) and so are its -wal/-shm; an older schema is refused
    (SchemaError: run `rpo-guard migrate`), and so is a newer one.
    """
    import sqlite_utils

    from rpo_guard import perms

    path = os.fspath(path)
    perms.make_data_dir(os.path.dirname(os.path.abspath(path)), group)
    new = perms.create_file(path, mode, group)
    db = sqlite_utils.Database(path)
    db.conn.execute("PRAGMA busy_timeout = 5000")
    ensure_schema(db)
    if new:
        perms.fix_companions(path, mode, group)
    refresh_holidays(db)
    return db


def refresh_holidays(db) -> None:
    """Keep the holiday cache of the calling-hours rule filled (rpo_guard.rules.calendar_it)."""
    from datetime import datetime, timedelta, timezone

    from rpo_guard.rules.calendar_it import cache_years, refresh_cache
    # Today in the rules' zone (not known here; Europe/Rome is 1-2 h ahead of a UTC server's
    # date.today() around New Year) is within a day of today in UTC: cover the years of both.
    now = datetime.now(timezone.utc)
    years = sorted({y for at in (now - timedelta(days=1), now + timedelta(days=1)) for y in cache_years(at.date())})
    try:
        refresh_cache(db.conn, years)
    except ImportError:
        pass  # no holidays package: each call computes (and fails closed) on its own


def ensure_schema(db) -> None:
    if db.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.conn.execute("PRAGMA journal_mode = WAL")
    version = db.conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    check_version(version, SCHEMA_VERSION, "register database")
    # version 0: a new file. Every statement is IF NOT EXISTS / OR REPLACE, so a creation
    # cut short (sqlite-utils commits each table) is completed by the next open.
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
        # Conduct-code rules (issue 6).
        db["caller_ids"].create({
            "id": int, "number": str, "brand": str, "note": str,
            "added_by": str, "added_at": str, "removed_by": str, "removed_at": str,
        }, pk="id", not_null={"number", "added_at"}, defaults={"brand": ""}, if_not_exists=True)
        db["caller_ids"].create_index(["brand", "number"], if_not_exists=True)
        db.conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS caller_ids_active ON caller_ids(number, brand)"
                        " WHERE removed_at IS NULL")
        db["silent_calls"].create({
            "id": int, "number": str, "brand": str, "at": str, "on_day": str,
            "uniqueid": str, "source": str, "recorded_by": str, "recorded_at": str,
        }, pk="id", not_null={"number", "at", "on_day", "recorded_at"}, defaults={"brand": ""},
            if_not_exists=True)
        db["silent_calls"].create_index(["number", "on_day"], if_not_exists=True)
        db["holidays"].create({"day": str, "year": int, "name": str}, pk="day",
                              not_null={"year", "name"}, if_not_exists=True)
        db["holiday_years"].create({"year": int, "source": str}, pk="year", not_null={"source"},
                                   if_not_exists=True)
        # later versions: the same statements `rpo-guard migrate` runs
        for step in sorted(STEPS):
            for sql in STEPS[step][1]:
                db.conn.execute(sql)
        record(db.conn, SCHEMA_VERSION, f"created at version {SCHEMA_VERSION}")
        db.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def check_version(version: int, current: int, what: str) -> None:
    """SchemaError unless ``version`` is 0 (new) or ``current``."""
    if version > current:
        raise SchemaError(f"{what} has schema version {version}, newer than this rpo_guard knows ({current}): "
                          "upgrade rpo_guard")
    if 0 < version < current:
        raise SchemaError(f"{what} has schema version {version}, this rpo_guard needs {current} "
                          "(run `rpo-guard migrate`)")


def record(conn, version: int, description: str) -> None:
    """One row of schema_migrations: what was applied, when, by whom, with which rpo_guard."""
    import getpass
    from datetime import datetime, timezone

    try:
        who = getpass.getuser()
    except Exception:  # no user name for this uid (containers)
        who = str(os.getuid())
    conn.execute("INSERT OR REPLACE INTO schema_migrations (version, applied_at, applied_by, rpo_guard, description)"
                 " VALUES (?, ?, ?, ?, ?)",
                 (version, datetime.now(timezone.utc).isoformat(timespec="seconds"), who, package_version(),
                  description))


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("rpo_guard")
    except PackageNotFoundError:
        return "unknown"
