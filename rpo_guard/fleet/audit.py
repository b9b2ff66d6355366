"""The fleet's one audit trail at the centre: every box's chain verified with the hash of
rpo_guard.audit.log, and the central rows read as the local tools read audit.db.

Listing, export and summary are rpo_guard.audit.query's own functions given :data:`CENTRAL`
(the same filters and columns as on one box, each row naming its box), read inside
:func:`snapshot`: one consistent view of every box's rows, streamed from a server-side cursor.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

from rpo_guard.audit.chain import Problem, VerifyResult
from rpo_guard.audit.log import COLUMNS, row_hash
from rpo_guard.audit.query import Source

from .central import AUDIT_COLUMNS

# box_attempts with the columns of audit.db's attempts_explained view, computed as SQLite does
# (at_utc to the millisecond, day = the date of `at` as written, basis unpacked as JSON values).
EXPLAINED = """(SELECT box, id, at,
    to_char((at::timestamptz) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS at_utc,
    substr(at, 1, 10) AS day, uniqueid, channel, callerid, accountcode, brand, dialed, e164, decision, reason,
    j -> 'kind' AS basis_kind, j -> 'batch_id' AS batch_id, j -> 'consulted_on' AS consulted_on,
    j -> 'consent_id' AS consent_id, j -> 'given_at' AS consent_given_at, j -> 'evidence' AS evidence,
    j -> 'dnc_id' AS dnc_id, detail, latency_ms, via, basis, prev_hash, hash
  FROM box_attempts CROSS JOIN LATERAL (SELECT basis::jsonb AS j OFFSET 0) AS b) AS attempts_explained"""


def _server_cursor(conn, sql: str, params):
    """A server-side cursor: rows come a few thousand at a time, whatever the size of the trail."""
    if conn.info.transaction_status.name == "IDLE":  # no transaction to hold the cursor
        raise RuntimeError("read the central trail inside rpo_guard.fleet.audit.snapshot(conn)")
    cur = conn.cursor(name="central_attempts")
    cur.itersize = 5000
    cur.execute(sql, params)
    return cur


# Across boxes the rows come in time order (ties: box, then id); each box's own rows keep their ids.
CENTRAL = Source(attempts="box_attempts", explained=EXPLAINED, keys=("box",), order=("at_utc", "box", "id"),
                 postgres=True, stream=_server_cursor)


@contextmanager
def snapshot(conn):
    """One read-only transaction over the central trail (every query inside sees the same rows)."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield conn


def known(conn, box: str) -> bool:
    """Whether the centre knows this box (its agent reported, or rows of it were shipped)."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM boxes WHERE box = %s)"
                        " OR EXISTS (SELECT 1 FROM box_attempts WHERE box = %s)", (box, box)).fetchone()[0]


def boxes(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT box FROM box_attempts ORDER BY box")]


def verify_box(conn, box: str) -> VerifyResult:
    """Walk one box's shipped rows in id order: consecutive ids, each row linked to the one
    before and matching its hash. The first row shipped is the start (a box whose log was
    pruned before it joined starts later than id 1: noted)."""
    res = VerifyResult()
    expected_id = expected_prev = None
    n = len(COLUMNS)
    # inside a snapshot already (the report): the same view of the trail as its counts
    with snapshot(conn) if conn.info.transaction_status.name == "IDLE" else nullcontext():
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


def verify_all(conn, box: str | None = None) -> dict[str, VerifyResult]:
    """Every box's chain (or only ``box``'s), by box name."""
    return {b: verify_box(conn, b) for b in ([box] if box is not None else boxes(conn))}
