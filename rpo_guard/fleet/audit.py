"""The fleet's one audit trail at the centre: every box's chain verified with the hash of
rpo_guard.audit.log, and the central rows read as the local tools read audit.db."""
from __future__ import annotations

from rpo_guard.audit.chain import Problem, VerifyResult
from rpo_guard.audit.log import COLUMNS, row_hash

from .central import AUDIT_COLUMNS


def boxes(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT box FROM box_attempts ORDER BY box")]


def verify_box(conn, box: str) -> VerifyResult:
    """Walk one box's shipped rows in id order: consecutive ids, each row linked to the one
    before and matching its hash. The first row shipped is the start (a box whose log was
    pruned before it joined starts later than id 1: noted)."""
    res = VerifyResult()
    expected_id = expected_prev = None
    n = len(COLUMNS)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur = conn.cursor(name=f"verify_{abs(hash(box))}")
        cur.execute(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM box_attempts WHERE box = %s ORDER BY id", (box,))
        for r in cur:
            row_id, values, prev_hash, stored = r[0], r[1:n + 1], r[n + 1], r[n + 2]
            if expected_id is None:
                expected_id, expected_prev = row_id, prev_hash
                if row_id != 1:
                    res.notes.append(f"box {box}: the trail starts at row {row_id} (earlier rows pruned on the box)")
            if row_id != expected_id:
                res.problem = Problem("deleted", row_id, f"box {box}: row(s) {expected_id}..{row_id - 1} missing")
                break
            if prev_hash != expected_prev:
                res.problem = Problem("replaced", row_id, f"box {box}: row {row_id} does not link to row {row_id - 1}")
                break
            if row_hash(prev_hash, row_id, values) != stored:
                res.problem = Problem("edited", row_id, f"box {box}: row {row_id} no longer matches its hash")
                break
            if res.first_id is None:
                res.first_id = row_id
            res.last_id = row_id
            res.rows += 1
            expected_id, expected_prev = row_id + 1, stored
        cur.close()
    if expected_prev is not None:
        res.head_hash = expected_prev
    return res


def verify_all(conn) -> dict[str, VerifyResult]:
    return {box: verify_box(conn, box) for box in boxes(conn)}


def summary(conn, since: str | None = None, until: str | None = None) -> list[dict]:
    """Attempts per box, day, decision and reason (the central `audit summary`)."""
    sql = ("SELECT box, substr(at, 1, 10), decision, reason, count(*) FROM box_attempts"
           " WHERE (%s::text IS NULL OR at >= %s) AND (%s::text IS NULL OR at < %s)"
           " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4")
    return [dict(zip(("box", "day", "decision", "reason", "attempts"), r))
            for r in conn.execute(sql, (since, since, until, until))]


def rows(conn, box: str | None = None, limit: int | None = None):
    sql = f"SELECT box, {', '.join(AUDIT_COLUMNS)} FROM box_attempts WHERE (%s::text IS NULL OR box = %s)" \
          " ORDER BY at, box, id" + (" LIMIT %s" % int(limit) if limit else "")
    keys = ("box",) + AUDIT_COLUMNS
    cur = conn.cursor(name="central_rows")
    cur.execute(sql, (box, box))
    for r in cur:
        yield dict(zip(keys, r))
