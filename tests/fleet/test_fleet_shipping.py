"""Audit shipping at the centre (rpo_guard.fleet.central.ship_attempts): idempotent by
(box, id, hash), and its cost independent of how many rows the trail already holds."""
from __future__ import annotations

import pytest

from rpo_guard.fleet.central import AUDIT_COLUMNS, ship_attempts
from rpo_guard.fleet.schema import CentralError

psycopg = pytest.importorskip("psycopg", reason="psycopg (3) is not installed: pip install 'rpo_guard[fleet]'")


def rows(first: int, count: int, tag: str = "h") -> list[tuple]:
    out = []
    for i in range(first, first + count):
        values = {"id": i, "at": "2026-12-02T08:00:00.000+01:00", "uniqueid": f"u{i}", "channel": "SIP/x",
                  "callerid": "0612345678", "accountcode": "", "brand": "", "dialed": "3331234567",
                  "e164": "+393331234567", "decision": "ALLOW", "reason": "not_registered", "basis": "{}",
                  "detail": "", "latency_ms": 0.5, "via": "fastagi", "prev_hash": f"{tag}{i - 1}", "hash": f"{tag}{i}"}
        out.append(tuple(values[c] for c in AUDIT_COLUMNS))
    return out


def seq_rows_read(conn) -> int:
    """Rows of box_attempts read by sequential scans so far (this session's counts flushed first)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables"
                        " WHERE relname = 'box_attempts'").fetchone()[0]


def test_a_ship_reads_no_whole_trail_even_with_statistics_behind(central):
    with psycopg.connect(central, autocommit=True) as conn:
        if conn.info.server_version < 150000:
            pytest.skip("pg_stat_force_next_flush needs PostgreSQL 15")
        conn.execute("ALTER TABLE box_attempts SET (autovacuum_enabled = false)")
        conn.execute("ANALYZE box_attempts")  # statistics of an empty table: what a fast-growing trail outruns
        for first in range(1, 200_001, 20_000):
            assert ship_attempts(conn, "big", rows(first, 20_000)) == 20_000
        before = seq_rows_read(conn)
        assert ship_attempts(conn, "a", rows(1, 40)) == 40
        assert ship_attempts(conn, "big", rows(200_001, 40)) == 40
        assert ship_attempts(conn, "big", rows(200_001, 80)) == 40  # half of it a second delivery
        assert seq_rows_read(conn) - before < 1000  # no scan of the 200,000 rows held
        assert conn.execute("SELECT count(*), max(id) FROM box_attempts WHERE box = 'big'").fetchone() == (200_080,
                                                                                                            200_080)


def test_a_second_delivery_is_skipped_and_a_different_row_refused_whole(central):
    with psycopg.connect(central, autocommit=True) as conn:
        assert ship_attempts(conn, "a", rows(1, 10)) == 10
        assert ship_attempts(conn, "a", rows(1, 10)) == 0
        assert ship_attempts(conn, "b", rows(1, 10, tag="x")) == 10  # the same ids of another box
        bad = rows(11, 5) + [rows(5, 1, tag="x")[0]] + rows(16, 5)
        with pytest.raises(CentralError, match="box a: audit row 5 differs"):
            ship_attempts(conn, "a", sorted(bad))
        assert conn.execute("SELECT count(*), max(id) FROM box_attempts WHERE box = 'a'").fetchone() == (10, 10)
        assert ship_attempts(conn, "a", rows(8, 8)) == 5
        assert [r[0] for r in conn.execute("SELECT hash FROM box_attempts WHERE box = 'a' ORDER BY id")] == \
            [f"h{i}" for i in range(1, 16)]


def shipped(central, box: str) -> int:
    with psycopg.connect(central) as conn:
        return conn.execute("SELECT count(*) FROM box_attempts WHERE box = %s", (box,)).fetchone()[0]


def append(box, first: int, count: int) -> None:
    from audit_helpers import make_row
    from rpo_guard.audit.log import AuditLog
    log = AuditLog(box.cfg.audit_db)
    log.append_many([make_row(i) for i in range(first, first + count)])
    log.close()


def test_new_audit_rows_are_shipped_without_a_commit_to_the_replica(make_box, central):
    from rpo_guard.fleet.sandbox import wait_for
    box = make_box("a", staleness=600, heartbeat=300)
    append(box, 0, 5)
    box.start_agent()
    wait_for(lambda: shipped(central, "a") == 5 and box.replica()["confirmed_at"] is not None, what="first round")
    confirmed = box.replica()["confirmed_at"]
    for k in range(1, 5):
        append(box, 5 * k, 5)
        wait_for(lambda: shipped(central, "a") == 5 * (k + 1), what=f"shipment {k}")
    # rpo.db was not written for them: the replica was confirmed once, at the start
    assert box.replica()["confirmed_at"] == confirmed


def test_a_steady_stream_of_audit_rows_never_holds_back_the_replica_confirmation(make_box, central):
    import time
    box = make_box("a", staleness=60, heartbeat=1)
    box.start_agent()
    seen = set()
    i = 0
    end = time.monotonic() + 6
    while time.monotonic() < end:  # a new row every 20 ms: the agent always has audit rows to ship
        append(box, i, 1)
        i += 1
        seen.add(box.replica()["confirmed_at"])
        time.sleep(0.02)
    assert len(seen - {None}) >= 3  # confirmed again about every second, not only at the start
    assert box.check("+393331234567").reason != "replica_stale"
