"""The hash chain of audit.db: written atomically, verified, tampering named, pruning kept verifiable."""
from __future__ import annotations

import json
import sqlite3
import threading

import pytest
from audit_helpers import fill, make_row, raw, rehash_from

from rpo_guard.audit.chain import (PruneRefused, check_signature, make_digest, open_ro, prune, prune_plan,
                                   verify)
from rpo_guard.audit.log import COLUMNS, GENESIS, NO_DELETE_TRIGGER, AuditLog, canonical, row_hash


def check(path, anchors=None):
    conn = open_ro(path)
    try:
        return verify(conn, anchors)
    finally:
        conn.close()


def drop_triggers(conn):
    conn.execute("DROP TRIGGER attempts_no_update")
    conn.execute("DROP TRIGGER attempts_no_delete")


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "audit.db"
    fill(path, 60)
    return path


def test_rows_chain_from_genesis_and_hash_is_the_documented_formula(db):
    conn = raw(db)
    rows = conn.execute(f"SELECT id, {', '.join(COLUMNS)}, prev_hash, hash FROM attempts ORDER BY id").fetchall()
    assert [r[0] for r in rows] == list(range(1, 61))
    assert rows[0][-2] == GENESIS
    import hashlib
    for before, r in zip([None] + rows, rows):
        if before is not None:
            assert r[-2] == before[-1]
        body = json.dumps(list(r[:-2]), ensure_ascii=False, separators=(",", ":")).encode()
        assert body == canonical(r[0], r[1:-2])
        assert r[-1] == hashlib.sha256(r[-2].encode() + b"\n" + body).hexdigest()
    res = check(db)
    assert res.ok and res.rows == 60 and (res.first_id, res.last_id) == (1, 60) and res.head_hash == rows[-1][-1]


def test_values_are_hashed_as_sqlite_returns_them(tmp_path):
    """An int latency or a non-text value must hash as what is read back, or verify would fail later."""
    path = tmp_path / "audit.db"
    log = AuditLog(path)
    log.append(make_row(1, latency_ms=3, brand=42, callerid=None, basis={"z": 1, "a": [1, 2]}))
    log.append(make_row(2, latency_ms=float("nan")))
    log.close()
    assert check(path).ok
    row = raw(path).execute("SELECT latency_ms, brand, basis FROM attempts WHERE id = 1").fetchone()
    assert row == (3.0, "42", '{"a": [1, 2], "z": 1}')


def test_append_only_triggers_still_refuse(db):
    conn = raw(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE attempts SET decision = 'ALLOW' WHERE id = 3")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM attempts WHERE id = 3")
    log = AuditLog(db)
    prune(log.conn, conn.execute("SELECT at FROM attempts WHERE id = 9").fetchone()[0], "now", "auditor")
    log.close()
    assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 1
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM checkpoints")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE checkpoints SET rows = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM attempts")


def test_threads_with_their_own_logs_chain_correctly(tmp_path):
    """The FastAGI writer thread and process AGIs write the same file at once."""
    path = tmp_path / "audit.db"
    AuditLog(path).close()
    errors = []

    def writer(k):
        log = AuditLog(path, busy_timeout_ms=20000)
        try:
            for j in range(25):
                log.append_many([make_row(k * 1000 + j * 4 + m) for m in range(4)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            log.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    res = check(path)
    assert res.ok, res.summary()
    assert res.rows == 8 * 25 * 4


# -- each kind of tampering ----------------------------------------------------------

def test_edited_row_is_named(db):
    conn = raw(db)
    drop_triggers(conn)
    conn.execute("UPDATE attempts SET decision = 'ALLOW', reason = 'consent' WHERE id = 17")
    res = check(db)
    assert not res.ok and (res.problem.kind, res.problem.row_id) == ("edited", 17)


def test_edit_hidden_by_rehashing_breaks_at_the_next_row_unless_everything_after_is_rehashed(db):
    conn = raw(db)
    drop_triggers(conn)
    conn.execute("UPDATE attempts SET reason = 'consent' WHERE id = 20")
    r = conn.execute(f"SELECT prev_hash, {', '.join(COLUMNS)} FROM attempts WHERE id = 20").fetchone()
    conn.execute("UPDATE attempts SET hash = ? WHERE id = 20", (row_hash(r[0], 20, r[1:]),))
    res = check(db)
    assert (res.problem.kind, res.problem.row_id) == ("replaced", 21)  # row 21 links to a hash now gone
    assert "row 20 was replaced" in res.problem.message


def test_deleted_row_is_named(db):
    conn = raw(db)
    drop_triggers(conn)
    conn.execute("DELETE FROM attempts WHERE id IN (30, 31)")
    res = check(db)
    assert (res.problem.kind, res.problem.row_id) == ("deleted", 32)
    assert "30..31" in res.problem.message


def test_deleted_tail_is_named_and_later_writes_leave_the_gap(db):
    conn = raw(db)
    drop_triggers(conn)
    conn.execute("DELETE FROM attempts WHERE id > 55")
    res = check(db)
    assert (res.problem.kind, res.problem.row_id) == ("truncated", 56)
    fill(db, 3, start=500)  # the AGI keeps writing: it must not reuse ids 56..60
    res = check(db)
    assert (res.problem.kind, res.problem.row_id) == ("deleted", 61)


def test_inserted_row_is_named(db):
    """A forged row slipped in after row 40, the later ids renumbered, the forged row hashed right."""
    conn = raw(db)
    drop_triggers(conn)
    conn.execute("UPDATE attempts SET id = -id WHERE id > 40")
    conn.execute("UPDATE attempts SET id = 1 - id WHERE id < 0")
    values = list(conn.execute(f"SELECT {', '.join(COLUMNS)} FROM attempts WHERE id = 40").fetchone())
    values[COLUMNS.index("decision")], values[COLUMNS.index("reason")] = "BLOCK", "internal_dnc"
    prev = conn.execute("SELECT hash FROM attempts WHERE id = 40").fetchone()[0]
    conn.execute(f"INSERT INTO attempts (id, {', '.join(COLUMNS)}, prev_hash, hash) VALUES "
                 f"({', '.join('?' * (len(COLUMNS) + 3))})", (41, *values, prev, row_hash(prev, 41, values)))
    res = check(db)
    assert (res.problem.kind, res.problem.row_id) == ("inserted", 42)
    assert "41..41 were inserted" in res.problem.message


def test_reordered_rows_are_named(db):
    conn = raw(db)
    drop_triggers(conn)
    cols = ", ".join(COLUMNS + ("prev_hash", "hash"))
    a = conn.execute(f"SELECT {cols} FROM attempts WHERE id = 10").fetchone()
    b = conn.execute(f"SELECT {cols} FROM attempts WHERE id = 11").fetchone()
    sets = ", ".join(f"{c} = ?" for c in COLUMNS + ("prev_hash", "hash"))
    conn.execute(f"UPDATE attempts SET {sets} WHERE id = 11", a)
    conn.execute(f"UPDATE attempts SET {sets} WHERE id = 10", b)
    res = check(db)
    assert (res.problem.kind, res.problem.row_id) == ("reordered", 10)


def test_whole_rewrite_passes_the_chain_but_not_an_earlier_digest(db, tmp_path):
    conn = open_ro(db)
    day = conn.execute("SELECT substr(at, 1, 10) FROM attempts WHERE id = 30").fetchone()[0]
    digest = make_digest(conn, day, "2026-11-01T00:00:00+01:00", key=b"k" * 32)
    conn.close()
    assert check(db, [digest]).ok and check(db, [digest]).anchors_checked == 1
    w = raw(db)
    drop_triggers(w)
    w.execute("UPDATE attempts SET reason = 'consent', decision = 'ALLOW' WHERE id = 5")
    rehash_from(w, 5)
    assert check(db).ok  # a full rewrite is invisible to the chain alone...
    res = check(db, [digest])
    assert (res.problem.kind, res.problem.row_id) == ("anchor", digest["head_id"])  # ...not to the digest


def test_digest_counts_head_and_signature(db):
    conn = open_ro(db)
    days = [r[0] for r in conn.execute("SELECT DISTINCT substr(at, 1, 10) FROM attempts ORDER BY 1")]
    d = make_digest(conn, days[1], "2026-11-01T00:00:00+01:00", key=b"s" * 32)
    n, first, last = conn.execute("SELECT count(*), min(id), max(id) FROM attempts WHERE substr(at, 1, 10) = ?",
                                  (days[1],)).fetchone()
    head = conn.execute("SELECT max(id) FROM attempts WHERE substr(at, 1, 10) <= ?", (days[1],)).fetchone()[0]
    conn.close()
    assert (d["rows"], d["first_id"], d["last_id"], d["head_id"]) == (n, first, last, head)
    assert d["allowed"] + d["refused"] == n and sum(d["by_reason"].values()) == n
    assert check_signature(d, b"s" * 32) and not check_signature(d, b"t" * 32)
    forged = dict(d, rows=d["rows"] + 1)
    assert not check_signature(forged, b"s" * 32)
    assert make_digest(open_ro(db), days[1], "x", key=None)["hmac_sha256"] is None


def test_digest_counts_the_test_calls_apart(tmp_path):
    """simulate-call's and selftest's rows are in the day's rows and its id range, but
    not in allowed / refused / by_reason, which count calls to someone."""
    from datetime import datetime

    from audit_helpers import ROME
    path = tmp_path / "audit.db"
    at = datetime(2026, 10, 5, 10, 0, tzinfo=ROME)
    log = AuditLog(path)
    vias = ["agi", "simulate", "fastagi", "agi-selftest", "fastagi-selftest", "fastagi", None]
    for i, via in enumerate(vias):
        log.append(make_row(i, at=at, via=via, decision="ALLOW" if i % 2 else "BLOCK",
                            reason="not_registered" if i % 2 else "rpo_registered"))
    log.close()
    d = make_digest(open_ro(path), "2026-10-05", "x")
    assert (d["rows"], d["test_calls"], d["first_id"], d["last_id"]) == (7, 3, 1, 7)
    # the calls: agi (row 1, BLOCK), fastagi (3, BLOCK), fastagi (6, ALLOW), no via (7, BLOCK)
    assert (d["allowed"], d["refused"]) == (1, 3)
    assert d["by_reason"] == {"ALLOW not_registered": 1, "BLOCK rpo_registered": 3}
    assert d["digest"] == "rpo_guard audit digest v2"


# -- retention ---------------------------------------------------------------

def test_prune_keeps_the_rest_verifiable_and_is_recorded(db):
    conn = open_ro(db)
    cut = conn.execute("SELECT at FROM attempts WHERE id = 25").fetchone()[0]
    conn.close()
    log = AuditLog(db)
    n, last = prune_plan(log.conn, cut)
    res = prune(log.conn, cut, "2026-11-02T03:00:00+01:00", "auditor", chunk=7)
    log.close()
    assert res.rows == n and res.last_id == last and len(res.checkpoints) == -(-n // 7)
    r = check(db)
    assert r.ok, r.summary()
    assert r.pruned_rows == n and r.first_id == last + 1 and r.rows == 60 - n
    c = raw(db)
    cps = c.execute("SELECT pruned_by, before, first_id, last_id, rows, counts FROM checkpoints ORDER BY id").fetchall()
    assert cps[0][:3] == ("auditor", cut, 1) and cps[-1][3] == last
    assert sum(n for cp in cps for *_k, n in json.loads(cp[5])) == n
    # the triggers are back after the prune
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        c.execute("DELETE FROM attempts WHERE id = 59")
    # writing goes on from the remaining rows; pruning everything continues from the checkpoint
    fill(db, 5, start=900)
    log = AuditLog(db)
    prune(log.conn, "2099-01-01T00:00:00+01:00", "x", "auditor")
    log.close()
    assert c.execute("SELECT count(*) FROM attempts").fetchone()[0] == 0
    fill(db, 3, start=950)
    r = check(db)
    assert r.ok and r.first_id == 66 and r.pruned_rows == 65, r.summary()


def test_deleting_a_checkpoint_or_the_first_rows_after_it_is_detected(db):
    log = AuditLog(db)
    prune(log.conn, "2099-01-01T00:00:00+01:00", "x", "auditor", chunk=20)
    log.close()
    fill(db, 10, start=100)
    c = raw(db)
    c.execute("DROP TRIGGER checkpoints_no_delete")
    c.execute("DELETE FROM checkpoints WHERE id = 2")
    res = check(db)
    assert (res.problem.kind, res.problem.row_id) == ("checkpoint", 41)


def test_prune_refuses_to_hide_a_broken_stretch(db):
    w = raw(db)
    drop_triggers(w)
    w.execute("UPDATE attempts SET detail = 'changed' WHERE id = 4")
    w.execute(NO_DELETE_TRIGGER)
    log = AuditLog(db)
    with pytest.raises(PruneRefused, match="row 4"):
        prune(log.conn, "2099-01-01T00:00:00+01:00", "x", "auditor", chunk=10)
    log.close()
    # the broken stretch is in the first chunk: nothing was removed
    assert raw(db).execute("SELECT min(id) FROM attempts").fetchone()[0] == 1
    assert check(db).problem.row_id == 4


def test_a_long_lived_writer_rereads_the_tail_after_another_writer(tmp_path):
    """The writer keeps its last commit's tail; another connection's rows must not fork the chain."""
    from rpo_guard.audit.chain import verify
    path = str(tmp_path / "audit.db")
    first, second = AuditLog(path), AuditLog(path)
    try:
        row = {"at": "2026-11-25T10:00:00.000+01:00", "dialed": "3331234567", "decision": "ALLOW",
               "reason": "not_registered", "basis": {}, "via": "fastagi"}
        a = first.append_many([row, row])
        b = second.append_many([row])          # another writer extends the chain
        c = first.append_many([row])           # the first must chain onto it, not onto its own tail
        d = first.append(row)                  # and then keep its own tail again
        assert a + b + c + [d] == [1, 2, 3, 4, 5]
        res = verify(first.conn)
        assert res.ok, res.summary()
    finally:
        first.close()
        second.close()


def test_a_long_lived_writer_leaves_the_gap_of_rows_deleted_from_the_end(tmp_path):
    """Rows deleted by hand from the end do not lower sqlite_sequence: the writer that wrote
    them goes on after their ids, and verify names the deletion."""
    from rpo_guard.audit.chain import verify
    path = str(tmp_path / "audit.db")
    log = AuditLog(path)
    try:
        row = {"at": "2026-11-25T10:00:00.000+01:00", "dialed": "3331234567", "decision": "ALLOW",
               "reason": "not_registered", "basis": {}, "via": "fastagi"}
        assert [log.append(row) for _ in range(5)] == [1, 2, 3, 4, 5]
        conn = raw(path)
        drop_triggers(conn)
        conn.execute("DELETE FROM attempts WHERE id > 3")
        conn.close()
        assert log.append(row) == 6  # not 4: ids 4 and 5 stay missing
        res = verify(log.conn)
        assert (res.problem.kind, res.problem.row_id) == ("deleted", 6)
    finally:
        log.close()
