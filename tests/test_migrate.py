"""Schema versions and `rpo-guard migrate`, from the first released schema (tests/data/*_v1.sql).

The v1 databases are built from the DDL dumped from databases the code made
before version 2 existed, filled with data by plain SQL, then migrated; the
real AGI (through the Asterisk peer) and `rpo-guard check` must decide on
the migrated data as on fresh data, and nothing may be lost.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import agi_path, days, today_rome
from rpo_guard.audit.log import AUDIT_SCHEMA_VERSION, GENESIS, NO_DELETE_TRIGGER, AuditLog, row_hash, values_of
from rpo_guard.harness import Channel, run_process_agi
from rpo_guard.migrate import schema_objects
from rpo_guard.register.schema import SCHEMA_VERSION

DATA = Path(__file__).resolve().parent / "data"
BRAND = "Energia Uno"
FREE, REGISTERED, CONSENTED, ON_DNC, SILENT = "+393331234567", "+390612345678", "+393471111111", "+393482222222", \
    "+393493333333"
EXPECTED = {  # number -> (decision, reason) for BRAND, calling hours and caller ID off
    FREE: ("ALLOW", "not_registered"),
    REGISTERED: ("BLOCK", "rpo_registered"),
    CONSENTED: ("ALLOW", "consent"),
    ON_DNC: ("BLOCK", "internal_dnc"),
    SILENT: ("BLOCK", "silent_call_cooldown"),
}


def build_v1(env) -> None:
    """rpo.db and audit.db at version 1 from the frozen DDL, with a row in every table."""
    env.data.mkdir(exist_ok=True)
    c = sqlite3.connect(env.cfg.register_db)
    c.executescript((DATA / "rpo_v1.sql").read_text())
    c.execute("PRAGMA journal_mode = WAL")
    t, until = days(1), (today_rome() + timedelta(days=13)).isoformat()
    with c:
        c.execute("INSERT INTO batches (id, kind, source_file, sha256, shape, rows, consulted_on, brand, valid_until,"
                  " imported_by, imported_at, status) VALUES (1, 'consultation', 'c.csv', 'ab', 'status', 5, ?, '',"
                  " ?, 'test', ?, 'ok')", (t, until, t + "T08:00:00+01:00"))
        c.execute("INSERT INTO batches (id, kind, source_file, imported_at, status, error) VALUES "
                  "(2, 'consultation', 'bad.csv', ?, 'failed', 'line 3: bad number')", (t + "T09:00:00+01:00",))
        c.executemany("INSERT INTO consultations (number, batch_id, registered, registration_date) VALUES (?, 1, ?, ?)",
                      [(FREE, 0, None), (REGISTERED, 1, "2022-07-27"), (CONSENTED, 1, "2023-01-02"),
                       (ON_DNC, 0, None), (SILENT, 0, None)])
        c.execute("INSERT INTO consents (number, brand, kind, given_at, given_on, channel, evidence, source_file,"
                  " source_line) VALUES (?, ?, 'consent', ?, ?, 'web', 'form-77', 'consents.csv', 2)",
                  (CONSENTED, BRAND, days(30), days(30)))
        c.execute("INSERT INTO dnc (number, brand, reason, added_by, added_at) VALUES (?, '', 'asked', 'test', ?)",
                  (ON_DNC, days(2)))
        c.execute("INSERT INTO caller_ids (number, brand, note, added_by, added_at) VALUES"
                  " ('+390612340000', ?, 'ROC', 'test', ?)", (BRAND, days(5)))
        c.execute("INSERT INTO silent_calls (number, brand, at, on_day, source, recorded_by, recorded_at) VALUES"
                  " (?, ?, ?, ?, 'dialer', 'test', ?)", (SILENT, BRAND, days(1) + "T10:00:00+01:00", days(1), days(1)))
        c.execute("INSERT INTO holiday_years (year, source) VALUES (1999, 'test')")
        c.execute("INSERT INTO holidays (day, year, name) VALUES ('1999-12-25', 1999, 'Natale')")
    c.close()
    a = sqlite3.connect(env.cfg.audit_db, isolation_level=None)
    a.executescript((DATA / "audit_v1.sql").read_text())
    a.execute("PRAGMA journal_mode = WAL")
    # three chained rows, the third deleted from the end (by hand, as a v1 log may have
    # been tampered with): its id stays taken in sqlite_sequence, so the gap must survive
    prev = GENESIS
    for i, (number, reason) in enumerate([(FREE, "not_registered"), (REGISTERED, "rpo_registered"),
                                          (ON_DNC, "internal_dnc")], 1):
        values = values_of({"at": days(1) + f"T10:00:0{i}+01:00", "dialed": number, "e164": number, "brand": BRAND,
                            "decision": "ALLOW" if i == 1 else "BLOCK", "reason": reason, "via": "agi"})
        h = row_hash(prev, i, values)
        a.execute(AuditLog._INSERT, (i, *values, prev, h))
        prev = h
    a.execute("DROP TRIGGER attempts_no_delete")
    a.execute("DELETE FROM attempts WHERE id = 3")
    a.execute(NO_DELETE_TRIGGER)
    a.close()


def sequence(path) -> list:
    c = sqlite3.connect(path)
    try:
        return c.execute("SELECT name, seq FROM sqlite_sequence ORDER BY name").fetchall()
    finally:
        c.close()


def unique_indexes(path) -> list:
    c = sqlite3.connect(path)
    try:
        return [r[1] for r in c.execute("PRAGMA index_list(attempts)") if r[2]]
    finally:
        c.close()


def dump(path) -> dict:
    """Every row of every table (SQLite's own and schema_migrations aside)."""
    c = sqlite3.connect(path)
    try:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                          " AND name NOT LIKE 'sqlite_%' AND name != 'schema_migrations'")]
        return {t: sorted(c.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    finally:
        c.close()


def version(path) -> int:
    c = sqlite3.connect(path)
    try:
        return c.execute("PRAGMA user_version").fetchone()[0]
    finally:
        c.close()


def objects(path) -> dict:
    c = sqlite3.connect(path)
    try:
        return schema_objects(c)
    finally:
        c.close()


def rpo_guard(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "rpo-guard"), "--config", str(env.conf), *args],
                          capture_output=True, text=True, timeout=120)


def agi(env, number: str):
    return run_process_agi(agi_path(), [number, BRAND], Channel(extension=number), env=env.agi_env)


@pytest.fixture
def v1(env):
    build_v1(env)
    assert version(env.cfg.register_db) == 1 and version(env.cfg.audit_db) == 1
    return env


def test_fresh_databases_are_created_at_the_current_version(env):
    env.init()
    assert version(env.cfg.register_db) == SCHEMA_VERSION == 2
    assert version(env.cfg.audit_db) == AUDIT_SCHEMA_VERSION
    c = sqlite3.connect(env.cfg.register_db)
    rows = c.execute("SELECT version, applied_by, rpo_guard, description FROM schema_migrations").fetchall()
    c.close()
    assert [(r[0], r[3]) for r in rows] == [(2, "created at version 2")] and rows[0][1] and rows[0][2]
    r = rpo_guard(env, "migrate")
    assert r.returncode == 0 and r.stdout.count("version 2, current") == 1
    assert r.stdout.count(f"version {AUDIT_SCHEMA_VERSION}, current") == 1
    assert unique_indexes(env.cfg.audit_db) == []  # the hash column is not indexed (version 2)


def test_v1_register_blocks_every_call_until_migrated(v1):
    """End to end: the real AGI on a v1 register refuses the call and logs what to do."""
    s = agi(v1, FREE)
    assert (s.agistatus, s.result, s.reason, s.dialplan_allows) == ("SUCCESS", "BLOCK", "error", False)
    assert b"Traceback" not in s.stderr
    log = v1.failures.read_text()
    assert "schema version 1, expected 2" in log and "run `rpo-guard migrate`" in log
    # the v1 audit log is refused too: the attempt is kept in the failure log, not written
    assert f"audit schema version 1, this rpo_guard needs {AUDIT_SCHEMA_VERSION} (run `rpo-guard migrate`)" in log
    assert [r["id"] for r in v1.audit_rows()] == [1, 2] and "'reason': 'error'" in log
    r = rpo_guard(v1, "check", "3331234567", "--brand", BRAND)
    assert r.returncode == 1 and r.stdout.startswith("BLOCK error") and "rpo-guard migrate" in r.stdout
    st = rpo_guard(v1, "status", "--json")
    rep = json.loads(st.stdout)
    assert st.returncode == 2 and rep["schema_version"] == 1 and "rpo-guard migrate" in rep["schema_problem"]
    # the writing tools refuse too, rather than upgrade behind the operator's back
    r = rpo_guard(v1, "dnc", "add", "3331234567")
    assert r.returncode == 1 and "run `rpo-guard migrate`" in r.stderr and "Traceback" not in r.stderr
    assert version(v1.cfg.register_db) == 1


def test_migrate_v1_keeps_every_row_and_decides_as_before(v1):
    before_rpo, before_audit = dump(v1.cfg.register_db), dump(v1.cfg.audit_db)
    dry = rpo_guard(v1, "migrate", "--dry-run")
    assert dry.returncode == 0 and "version 1, would migrate to 2" in dry.stdout and "step 2 would apply" in dry.stdout
    assert version(v1.cfg.register_db) == 1 and "schema_migrations" not in str(objects(v1.cfg.register_db))

    r = rpo_guard(v1, "migrate")
    assert r.returncode == 0, r.stderr
    assert "migrated to version 2" in r.stdout and "step 2 applied" in r.stdout
    assert r.stdout.count("step 2 applied") == 2
    assert version(v1.cfg.register_db) == 2 and version(v1.cfg.audit_db) == AUDIT_SCHEMA_VERSION == 3
    assert "step 3 applied" in r.stdout
    assert dump(v1.cfg.register_db) == before_rpo and dump(v1.cfg.audit_db) == before_audit
    assert sequence(v1.cfg.audit_db) == [("attempts", 3)] and unique_indexes(v1.cfg.audit_db) == []
    c = sqlite3.connect(v1.cfg.register_db)
    rec = c.execute("SELECT version, applied_at, applied_by, description FROM schema_migrations").fetchall()
    c.close()
    assert len(rec) == 1 and rec[0][0] == 2 and "consents(brand, kind)" in rec[0][3] and rec[0][1] and rec[0][2]

    # the migrated schema is exactly a fresh one: same objects, same SQL
    fresh = v1.root / "fresh"
    from rpo_guard.register.schema import open_db
    open_db(fresh / "rpo.db").close()
    assert objects(v1.cfg.register_db) == objects(fresh / "rpo.db")
    AuditLog(fresh / "audit.db").close()
    assert objects(v1.cfg.audit_db) == objects(fresh / "audit.db")

    for number, expected in EXPECTED.items():
        s = agi(v1, number)
        assert (s.agistatus, s.result, s.reason) == ("SUCCESS", *expected), (number, v1.failures.read_text()
                                                                             if v1.failures.exists() else "")
        r = rpo_guard(v1, "check", number, "--brand", BRAND, "--json")
        out = json.loads(r.stdout)
        assert (out["decision"], out["reason"]) == expected and r.returncode == (0 if expected[0] == "ALLOW" else 1)
    rows = v1.audit_rows()
    assert [r["id"] for r in rows] == [1, 2, *range(4, 4 + len(EXPECTED))]  # id 3 stays taken
    assert [r["reason"] for r in rows[2:]] == [e[1] for e in EXPECTED.values()]
    # the pre-migration rows still chain, and the row deleted before it is still named
    v = rpo_guard(v1, "audit", "verify")
    assert v.returncode == 1 and "BROKEN at row 4: deleted: row(s) 3..3" in v.stdout + v.stderr
    st = json.loads(rpo_guard(v1, "status", "--json").stdout)
    assert st["schema_problem"] == "" and st["brands"][0]["numbers_consulted"] == 5


def test_migrate_twice_is_a_no_op(v1):
    assert rpo_guard(v1, "migrate").returncode == 0
    snapshot = (dump(v1.cfg.register_db), objects(v1.cfg.register_db))
    c = sqlite3.connect(v1.cfg.register_db)
    record = c.execute("SELECT * FROM schema_migrations").fetchall()
    c.close()
    again = rpo_guard(v1, "migrate", "--json")
    out = json.loads(again.stdout)
    assert again.returncode == 0 and out["exit"] == 0
    assert [(d["database"], d["state"], d["applied"]) for d in out["databases"]] == [
        ("rpo.db", "current", []), ("audit.db", "current", [])]
    c = sqlite3.connect(v1.cfg.register_db)
    assert c.execute("SELECT * FROM schema_migrations").fetchall() == record
    c.close()
    assert (dump(v1.cfg.register_db), objects(v1.cfg.register_db)) == snapshot


@pytest.mark.parametrize("which", ["rpo.db", "audit.db"])
def test_a_database_newer_than_the_code_is_refused_and_left_alone(v1, which):
    newer = {"rpo.db": SCHEMA_VERSION + 1, "audit.db": AUDIT_SCHEMA_VERSION + 1}[which]
    path = v1.data / which
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version = {newer}")
    c.close()
    before = (dump(path), objects(path))
    r = rpo_guard(v1, "migrate")
    assert r.returncode == 1
    assert f"version {newer}: REFUSED: schema version {newer} is newer than this rpo_guard knows" in r.stderr
    assert version(path) == newer and (dump(path), objects(path)) == before
    other = v1.data / ({"rpo.db", "audit.db"} - {which}).pop()
    assert version(other) == (SCHEMA_VERSION if other.name == "rpo.db" else AUDIT_SCHEMA_VERSION)  # still handled
    # and the AGI refuses the call on it (an audit.db it cannot write: BLOCK, logged)
    s = agi(v1, FREE)
    assert (s.result, s.dialplan_allows) == ("BLOCK", False) if s.result else not s.dialplan_allows
    assert f"schema version {newer}" in v1.failures.read_text()


def test_a_failing_step_rolls_back_whole(v1):
    """A table already named like the step's index: the step fails, nothing of it stays."""
    c = sqlite3.connect(v1.cfg.register_db)
    c.execute("CREATE TABLE consents_brand (x)")
    c.commit()
    c.close()
    r = rpo_guard(v1, "migrate")
    assert r.returncode == 1 and "step failed, rolled back" in r.stderr
    assert version(v1.cfg.register_db) == 1
    assert ("table", "schema_migrations") not in objects(v1.cfg.register_db)
    c = sqlite3.connect(v1.cfg.register_db)
    c.execute("DROP TABLE consents_brand")
    c.commit()
    c.close()
    assert rpo_guard(v1, "migrate").returncode == 0 and version(v1.cfg.register_db) == 2


def test_a_failing_audit_step_rolls_back_whole(v1):
    """A table already named like the one the rebuild sets aside: the step fails after
    nothing, and the v1 log is left exactly as it was (its rows, views and index)."""
    c = sqlite3.connect(v1.cfg.audit_db)
    c.execute("CREATE TABLE attempts_v1 (x)")
    c.commit()
    c.close()
    before = (dump(v1.cfg.audit_db), objects(v1.cfg.audit_db), sequence(v1.cfg.audit_db))
    r = rpo_guard(v1, "migrate")
    assert r.returncode == 1 and "step failed, rolled back" in r.stderr
    assert version(v1.cfg.audit_db) == 1 and version(v1.cfg.register_db) == 2  # the other one is still handled
    assert (dump(v1.cfg.audit_db), objects(v1.cfg.audit_db), sequence(v1.cfg.audit_db)) == before
    assert unique_indexes(v1.cfg.audit_db) == ["sqlite_autoindex_attempts_1"]
    c = sqlite3.connect(v1.cfg.audit_db)
    c.execute("DROP TABLE attempts_v1")
    c.commit()
    c.close()
    assert rpo_guard(v1, "migrate").returncode == 0 and version(v1.cfg.audit_db) == AUDIT_SCHEMA_VERSION


def count_plan(path) -> str:
    from rpo_guard.audit.attempts import _COUNT_BRAND
    c = sqlite3.connect(path)
    try:
        return " ".join(r[-1] for r in c.execute("EXPLAIN QUERY PLAN " + _COUNT_BRAND, ("+393331234567", "2026-01-01", BRAND)))
    finally:
        c.close()


def test_migrate_v2_audit_log_to_the_covering_e164_index(env):
    """Version 2 indexed e164 alone: the attempt caps' count then read the rows. Step 3 makes
    the index cover the count; the rows, their chain and the register are untouched."""
    env.init()
    log = AuditLog(env.cfg.audit_db)
    for i, number in enumerate((FREE, FREE, REGISTERED)):
        log.append({"at": f"2026-11-2{i}T10:00:00.000+01:00", "uniqueid": str(i), "channel": "", "callerid": "",
                    "accountcode": "", "brand": BRAND, "dialed": number, "e164": number, "decision": "ALLOW",
                    "reason": "not_registered", "basis": None, "detail": "", "latency_ms": 1.0, "via": "agi"})
    log.close()
    assert "COVERING INDEX attempts_e164" in count_plan(env.cfg.audit_db)
    fresh_objects, rows = objects(env.cfg.audit_db), dump(env.cfg.audit_db)
    c = sqlite3.connect(env.cfg.audit_db)  # back to version 2, as that code made it
    c.executescript("DROP INDEX attempts_e164; CREATE INDEX attempts_e164 ON attempts(e164); PRAGMA user_version = 2;")
    c.close()
    assert "COVERING" not in count_plan(env.cfg.audit_db)
    s = agi(env, FREE)  # refused until migrated, and the attempt kept in the failure log
    assert (s.result, s.reason) == ("BLOCK", "error")
    assert f"audit schema version 2, this rpo_guard needs {AUDIT_SCHEMA_VERSION}" in env.failures.read_text()
    r = rpo_guard(env, "migrate")
    assert r.returncode == 0 and "step 3 applied" in r.stdout and "step 2" not in r.stdout, r.stdout
    assert version(env.cfg.audit_db) == AUDIT_SCHEMA_VERSION == 3
    assert objects(env.cfg.audit_db) == fresh_objects and dump(env.cfg.audit_db) == rows
    assert "COVERING INDEX attempts_e164" in count_plan(env.cfg.audit_db)
    assert rpo_guard(env, "audit", "verify").returncode == 0


def test_a_foreign_database_is_refused(env):
    env.data.mkdir()
    c = sqlite3.connect(env.cfg.register_db)
    c.execute("CREATE TABLE something (x)")
    c.commit()
    c.close()
    r = rpo_guard(env, "migrate")
    assert r.returncode == 1 and "not a database rpo_guard created" in r.stderr
    assert version(env.cfg.register_db) == 0


def test_migrate_stays_off_sqlite_utils_for_the_steps():
    """The steps are plain SQL on the stdlib driver (sqlite-utils only builds the fresh
    comparison schema); the per-call reader never imports either migrate or sqlite-utils."""
    code = ("import sys, rpo_guard.register.store, rpo_guard.agi; "
            "print('sqlite_utils' in sys.modules, 'rpo_guard.migrate' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
