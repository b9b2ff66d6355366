"""Schema upgrades of rpo.db and audit.db (`rpo-guard migrate`), stdlib sqlite3 only.

Each database carries its schema version in ``PRAGMA user_version``
(rpo.db: :data:`rpo_guard.register.schema.SCHEMA_VERSION`, audit.db:
:data:`rpo_guard.audit.log.AUDIT_SCHEMA_VERSION`). An upgrade runs the steps
from the database's version to the code's one, in order, each in its own
``BEGIN IMMEDIATE`` transaction that re-reads the version under the write
lock, runs the step's statements, records the step (rpo.db:
``schema_migrations``) and sets the new version: a step lands whole or not
at all, a second run (or a concurrent one) finds nothing to do, and readers
keep seeing the old version until the commit (the per-call reader refuses
anything but the current version: those calls are blocked, never allowed).
A database newer than the code is refused and left untouched.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field


class MigrateError(Exception):
    pass


@dataclass
class Plan:
    name: str                 # rpo.db | audit.db
    path: str
    current: int              # the version this code writes and reads
    version: int | None = None  # found; None when the file is missing
    steps: list[tuple[int, str]] = field(default_factory=list)  # (version reached, description) still to run
    applied: list[int] = field(default_factory=list)
    problem: str = ""         # set when the database is refused
    missing_objects: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.problem:
            return "refused"
        if self.version is None:
            return "missing"
        if self.applied:
            return "migrated"
        if self.steps:
            return "needs migration"
        return "current"

    def as_dict(self) -> dict:
        return {"database": self.name, "path": self.path, "version": self.version, "current": self.current,
                "state": self.state, "steps": [{"version": v, "description": d} for v, d in self.steps],
                "applied": self.applied, "problem": self.problem, "missing_objects": self.missing_objects}


def _databases(cfg):
    from rpo_guard.audit.log import AUDIT_SCHEMA_VERSION, AUDIT_STEPS
    from rpo_guard.register.schema import SCHEMA_VERSION, STEPS
    return (("rpo.db", cfg.register_db, SCHEMA_VERSION, STEPS),
            ("audit.db", cfg.audit_db, AUDIT_SCHEMA_VERSION, AUDIT_STEPS))


def _connect(path: str, wait_s: float, readonly: bool) -> sqlite3.Connection:
    from urllib.parse import quote
    uri = f"file:{quote(os.path.abspath(path))}" + ("?mode=ro" if readonly else "?mode=rw")
    return sqlite3.connect(uri, uri=True, timeout=wait_s, isolation_level=None)


def _user_tables(conn) -> int:
    return conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchone()[0]


def inspect(name: str, path: str, current: int, steps: dict, wait_s: float = 5) -> Plan:
    plan = Plan(name, path, current)
    if not os.path.isfile(path):
        return plan
    try:
        conn = _connect(path, wait_s, readonly=True)
        try:
            plan.version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = _user_tables(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        plan.problem = f"cannot read it: {exc}"
        return plan
    v = plan.version
    if v > current:
        plan.problem = (f"schema version {v} is newer than this rpo_guard knows ({current}): "
                        "upgrade rpo_guard, never downgrade a database")
    elif v == 0 and tables:
        plan.problem = "schema version 0 with tables in it: not a database rpo_guard created"
    elif v == 0:
        plan.version = None  # an empty file: as if missing, `rpo-guard init` fills it
    else:
        missing = [s for s in range(v + 1, current + 1) if s not in steps]
        if missing:
            plan.problem = f"no upgrade step to version {missing[0]} in this rpo_guard"
        plan.steps = [(s, steps[s][0]) for s in range(v + 1, current + 1) if s in steps]
    return plan


def upgrade(plan: Plan, steps: dict, wait_s: float = 60) -> Plan:
    """Run the plan's steps, one transaction each; returns the plan with ``applied`` filled."""
    from rpo_guard.register.schema import record

    if plan.problem or not plan.steps:
        return plan
    conn = _connect(plan.path, wait_s, readonly=False)
    try:
        for to, description in plan.steps:
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute("PRAGMA user_version").fetchone()[0]
                if found >= to:  # done meanwhile by another run
                    conn.execute("ROLLBACK")
                    continue
                if found != to - 1:
                    raise MigrateError(f"{plan.path}: expected version {to - 1} before step {to}, found {found}")
                for sql in steps[to][1]:
                    conn.execute(sql)
                if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
                                ).fetchone():
                    record(conn, to, description)
                conn.execute(f"PRAGMA user_version = {to}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            plan.applied.append(to)
            plan.version = to
    finally:
        conn.close()
    return plan


def schema_objects(conn) -> dict[tuple[str, str], str]:
    """(type, name) -> SQL of every object but SQLite's own."""
    return {(t, n): sql for t, n, sql in conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}


def expected_objects(name: str) -> set[tuple[str, str]]:
    """The objects a fresh database of the current version holds."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        if name == "rpo.db":
            from rpo_guard.register.schema import open_db
            db = open_db(path)
            conn = db.conn
        else:
            from rpo_guard.audit.log import AuditLog
            log = AuditLog(path)
            conn = log.conn
        try:
            return set(schema_objects(conn))
        finally:
            conn.close()


def verify(plan: Plan) -> Plan:
    """Fill ``missing_objects``: what a fresh database of this version has and this one lacks."""
    if plan.problem or plan.version != plan.current:
        return plan
    conn = _connect(plan.path, 5, readonly=True)
    try:
        have = set(schema_objects(conn))
    finally:
        conn.close()
    plan.missing_objects = sorted(f"{t} {n}" for t, n in expected_objects(plan.name) - have)
    return plan


def migrate(cfg, dry_run: bool = False, wait_s: float = 60) -> list[Plan]:
    """Inspect both databases and (unless ``dry_run``) upgrade those behind the code.

    A database refused (newer, foreign, unreadable) is left untouched; the
    other one is still handled.
    """
    plans = []
    for name, path, current, steps in _databases(cfg):
        plan = inspect(name, path, current, steps)
        if not dry_run and not plan.problem:
            try:
                upgrade(plan, steps, wait_s)
            except (sqlite3.Error, MigrateError) as exc:
                plan.problem = f"step failed, rolled back: {type(exc).__name__}: {exc}"
        if not dry_run and not plan.problem and plan.version is not None:
            verify(plan)
        plans.append(plan)
    return plans
