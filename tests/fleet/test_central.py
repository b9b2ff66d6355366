"""Fleet mode, step by step: the central schema, writes to the centre, the agent's replica."""
from __future__ import annotations

import json
import sqlite3

import pytest

from rpo_guard.fleet.schema import SCHEMA_VERSION, migrate, version

psycopg = pytest.importorskip("psycopg", reason="psycopg (3) is not installed: pip install 'rpo_guard[fleet]'")

A, B = "+393331234567", "+393339876543"


def days(n: int) -> str:
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo
    return (datetime.now(ZoneInfo("Europe/Rome")).date() - timedelta(days=n)).isoformat()


def wait_for(*a, **kw):
    from rpo_guard.fleet.sandbox import wait_for as w
    return w(*a, **kw)


def q(central, sql, params=()):
    with psycopg.connect(central) as conn:
        return conn.execute(sql, params).fetchall()


def test_migrate_is_versioned_and_idempotent(central):
    with psycopg.connect(central) as conn:
        assert version(conn) == SCHEMA_VERSION
        assert migrate(conn) == []
    assert q(central, "SELECT version FROM schema_migrations") == [(SCHEMA_VERSION,)]


def test_a_write_outside_a_change_is_refused(central):
    with pytest.raises(psycopg.errors.RaiseException, match="outside a change"):
        q(central, "INSERT INTO dnc (number, added_at) VALUES ('+39333', 'x')")


def test_dnc_add_goes_to_the_centre_as_one_change_and_not_to_rpo_db(make_box, central):
    box = make_box("a")
    r = box.cli("dnc", "add", A, "--reason", "asked")
    assert r.returncode == 0, r.stderr
    assert q(central, "SELECT number, reason FROM dnc") == [(A, "asked")]
    assert q(central, "SELECT kind, rows FROM change_log") == [("dnc_add", 1)]
    conn = sqlite3.connect(box.cfg.register_db)
    assert conn.execute("SELECT count(*) FROM dnc").fetchone()[0] == 0  # the agent brings it back
    conn.close()
    r = box.cli("dnc", "remove", A)
    assert r.returncode == 0 and q(central, "SELECT removed_at IS NOT NULL FROM dnc") == [(True,)]


def test_unreachable_centre_is_a_clear_error_and_nothing_is_written(tmp_path, make_box):
    box = make_box("a")
    box.central = f"host={tmp_path} dbname=nowhere user=postgres"
    box.write_config()
    r = box.cli("dnc", "add", A)
    assert r.returncode == 1 and "central database unreachable" in r.stderr and "Traceback" not in r.stderr
    conn = sqlite3.connect(box.cfg.register_db)
    assert conn.execute("SELECT count(*) FROM dnc").fetchone()[0] == 0
    conn.close()


def test_consultation_import_is_one_batch_entry_and_lands_on_the_replica(make_box, central):
    box = make_box("a")
    rows = [(f"+39333{i:07d}", "registered" if i % 3 == 0 else "not_registered") for i in range(2500)]
    res = box.consult(rows, days_ago=1)
    assert res.rows == 2500 and not res.skipped_duplicate_file
    assert q(central, "SELECT count(*) FROM consultations") == [(2500,)]
    assert q(central, "SELECT kind, rows, batch_id FROM change_log") == [("consultation", 2500, res.batch_id)]
    again = box.consult(rows, days_ago=1)
    assert again.skipped_duplicate_file and q(central, "SELECT count(*) FROM change_log") == [(1,)]
    assert box.check("+393330000001").reason == "replica_stale"  # no agent yet: never confirmed
    box.start_agent("--chunk-rows", "1000")  # three chunks, the batch visible with the last
    wait_for(lambda: box.replica()["last_seq"] == 1 and box.replica()["pending_batches"] == 0, what="landing")
    conn = sqlite3.connect(box.cfg.register_db)
    assert conn.execute("SELECT count(*), sum(registered) FROM consultations WHERE batch_id = ?",
                        (res.batch_id,)).fetchone() == (2500, 834)
    conn.close()
    assert box.check("+393330000001").reason == "not_registered"
    assert box.check("+393330000003").reason == "rpo_registered"


def test_a_bad_consultation_row_leaves_nothing_at_the_centre_but_the_failure(make_box, central):
    from rpo_guard.register.sources import ImportFailed
    box = make_box("a")
    with pytest.raises(ImportFailed, match=r"csv:3: field .number."):
        box.consult([(A, "registered"), ("12", "registered")], days_ago=1)
    assert q(central, "SELECT count(*) FROM consultations") == [(0,)]
    assert q(central, "SELECT status FROM batches") == [("failed",)]


def test_consents_and_dnc_files_go_through_the_same_checks(make_box, central):
    box = make_box("a")
    res = box.consents([(A, "acme", "consent", days(3), ""), (A, "", "optout", days(2), "")])
    assert res.rows == 2 and q(central, "SELECT count(*) FROM consents") == [(2,)]
    again = box.consents([(A, "acme", "consent", days(3), ""), (A, "", "optout", days(2), "")], name="c2.csv")
    assert again.rows == 0  # identical records: nothing changed
    from rpo_guard.sync import import_dnc
    path = box.csv("dnc.csv", f"number,brand,reason,action\n{B},,asked,add\n{A},,x,add\n{A},,,remove\n")
    r = import_dnc(box.cfg, path, who="test")
    assert r.rows == 3
    assert q(central, "SELECT number, removed_at IS NULL FROM dnc ORDER BY id") == [(B, True), (A, False)]


def test_agent_replicates_every_table_and_refuses_an_opt_out_at_once(make_box, central):
    box, other = make_box("a"), make_box("b")
    box.consult([(A, "not_registered"), (B, "not_registered")], days_ago=1)
    box.cli("caller-id", "add", "0612345678", check=True)
    box.cli("silent-call", B, check=True)
    for b in (box, other):
        b.start_agent()
    wait_for(lambda: other.check(A).reason == "not_registered", what="replica current")
    assert other.check(B).reason == "silent_call_cooldown"
    box.cli("dnc", "add", A, "--reason", "said stop", check=True)
    wait_for(lambda: other.check(A).reason == "internal_dnc", what="opt-out seen by the other box")
    conn = sqlite3.connect(other.cfg.register_db)
    assert conn.execute("SELECT count(*) FROM caller_ids WHERE removed_at IS NULL").fetchone()[0] == 1
    conn.close()


def test_dialplan_writes_apply_locally_at_once_and_reach_the_centre_once(make_box, central):
    box, other = make_box("a"), make_box("b")
    box.consult([(A, "not_registered"), (B, "not_registered")], days_ago=1)
    # no agent running: the silent call and the opt-out still apply on this box at once
    assert box.cli("silent-call", A, "--source", "dialplan", "--uniqueid", "17.1").returncode == 0
    assert box.cli("dnc", "add", B, "--source", "dialplan").returncode == 0
    st = box.replica()
    assert st["outbox_depth"] == 2 and st["outbox_unsent"] == 2
    conn = sqlite3.connect(box.cfg.register_db)
    assert conn.execute("SELECT count(*) FROM silent_calls WHERE id < 0").fetchone()[0] == 1
    conn.close()
    assert q(central, "SELECT count(*) FROM silent_calls") == [(0,)]
    for b in (box, other):
        b.start_agent()
    wait_for(lambda: box.replica()["outbox_depth"] == 0, what="outbox forwarded")
    wait_for(lambda: other.check(B).reason == "internal_dnc", what="opt-out on the other box")
    assert other.check(A).reason == "silent_call_cooldown"
    assert q(central, "SELECT count(*) FROM silent_calls") == [(1,)]
    assert q(central, "SELECT count(*) FROM outbox_applied") == [(2,)]
    conn = sqlite3.connect(box.cfg.register_db)
    assert conn.execute("SELECT count(*), min(id) > 0 FROM silent_calls").fetchone() == (1, 1)  # the local row gave way
    conn.close()


def test_status_shows_every_box_sequence_lag_staleness_and_outbox(make_box, central):
    a, b = make_box("a"), make_box("b")
    a.consult([(A, "not_registered")], days_ago=1)
    for box in (a, b):
        box.start_agent()
    wait_for(lambda: b.check(A).reason == "not_registered", what="b current")
    wait_for(lambda: len(q(central, "SELECT box FROM boxes")) == 2, what="both reported")
    b.stop_agent()
    a.cli("dnc", "add", B, check=True)
    b.cli("silent-call", A, "--source", "dialplan", check=True)
    r = b.cli("status", "--json")
    rep = json.loads(r.stdout)["fleet"]
    assert rep["box"] == "b" and rep["outbox_depth"] == 1 and rep["last_seq"] == 1
    assert rep["staleness_seconds"] is not None and rep["staleness_seconds"] >= 0
    boxes = {x["box"]: x for x in rep["centre"]["boxes"]}
    assert rep["centre"]["head_seq"] == 2 and boxes["b"]["lag_changes"] == 1 and boxes["b"]["lag_seconds"] >= 0
    text = b.cli("status").stdout
    assert "fleet box b: last sequence applied 1" in text and "box a: applied" in text and "outbox 1" in text


def test_a_single_box_seeds_an_empty_centre_and_becomes_the_first_box(make_box, central):
    from rpo_guard.audit.log import AuditLog
    from audit_helpers import make_row
    box, other = make_box("a"), make_box("b")
    box.central = ""
    box.write_config()  # a single box, as it ran before fleet mode
    box.consult([(A, "not_registered"), (B, "registered")], days_ago=1)
    box.cli("dnc", "add", "+393330000042", check=True)
    log = AuditLog(box.cfg.audit_db)
    log.append_many([make_row(i) for i in range(7)])
    log.close()
    box.central = central
    box.write_config()
    r = box.cli("fleet", "seed")
    assert r.returncode == 0 and "consultations 2" in r.stdout and "dnc 1" in r.stdout, r.stderr
    assert box.cli("fleet", "seed").returncode == 1  # only an empty centre
    assert q(central, "SELECT kind FROM change_log") == [("seed",)]
    for b in (box, other):
        b.start_agent()
    wait_for(lambda: other.check(B).reason == "rpo_registered", what="seeded data on the other box")
    assert other.check("+393330000042").reason == "internal_dnc"
    wait_for(lambda: box.check(A).reason == "not_registered", what="the seeding box confirmed")
    conn = sqlite3.connect(box.cfg.register_db)
    assert conn.execute("SELECT count(*) FROM consultations").fetchone()[0] == 2  # same ids: nothing doubled
    conn.close()
    wait_for(lambda: q(central, "SELECT count(*) FROM box_attempts WHERE box = 'a'") == [(7,)], what="audit shipped")
