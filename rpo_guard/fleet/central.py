"""Writes to the fleet's central PostgreSQL, each in one transaction with one change-log entry.

Every writer of fleet mode ends here: the imports of :mod:`rpo_guard.sync`
(through :func:`import_batch`), the one-number list writers of
:mod:`rpo_guard.register.lists` and :mod:`rpo_guard.register.conduct`, the
boxes' forwarded outbox entries (:func:`apply_outbox`, idempotent by key) and
their shipped audit rows (:func:`ship_attempts`, idempotent by box, id and
hash). A centre that cannot be reached raises
:class:`rpo_guard.fleet.schema.CentralError` and nothing is written.

A consultation of millions of rows is checked by the same code as a local
import, into a scratch SQLite file, then COPied into ``consultations`` in the
same PostgreSQL transaction that records its batch: the change log gets ONE
entry for the whole file, and the change lock is only held for the last few
statements, so an opt-out entered meanwhile is not kept waiting.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager

from .schema import CHANGE_LOCK, CHANNEL, CentralError, check, connect

BATCH_COLUMNS = ("id", "kind", "source_file", "sha256", "shape", "rows", "consulted_on", "brand", "valid_until",
                 "imported_by", "imported_at", "status", "error", "registered", "encoding", "sent_file",
                 "sent_sha256", "seconds")
# replicated tables -> their columns, as rpo.db has them (rpo_guard.register.schema)
TABLES = {
    "batches": BATCH_COLUMNS,
    "consents": ("id", "number", "brand", "kind", "given_at", "given_on", "ends_at", "ends_on", "channel",
                 "evidence", "source_file", "source_line", "batch_id"),
    "dnc": ("id", "number", "brand", "reason", "added_by", "added_at", "removed_by", "removed_at",
            "source_file", "source_line", "batch_id"),
    "caller_ids": ("id", "number", "brand", "note", "added_by", "added_at", "removed_by", "removed_at"),
    "silent_calls": ("id", "number", "brand", "at", "on_day", "uniqueid", "source", "recorded_by", "recorded_at"),
}
LIST_NOTE = {"dnc": "reason", "caller_ids": "note"}


@contextmanager
def writer(cfg):
    """A connection to the centre, schema checked; closed on exit. Any database error
    becomes CentralError (the transaction, if open, is rolled back: nothing written)."""
    conn = connect(cfg.central, autocommit=True)  # each write is one explicit transaction()
    import psycopg  # present: connect() succeeded

    try:
        check(conn)
        yield conn
    except psycopg.Error as exc:
        raise CentralError(f"central database: {type(exc).__name__}: {exc}".strip()) from None
    finally:
        conn.close()


def open_change(conn, kind: str, origin: str = "") -> int:
    """Inside a transaction: take the change lock, draw the next sequence number and
    let the stamp trigger see it. Hold the lock (until commit) for as short as possible."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGE_LOCK,))
    seq = conn.execute("SELECT nextval('change_seq')").fetchone()[0]
    conn.execute("SELECT set_config('rpo.change_seq', %s, true)", (str(seq),))
    return seq


def close_change(conn, seq: int, kind: str, origin: str = "", summary: str = "", rows: int = 0,
                 batch_id: int | None = None) -> None:
    """The change-log entry of ``seq``, and the wake-up of every agent (sent at commit)."""
    conn.execute("INSERT INTO change_log (seq, kind, origin, summary, batch_id, rows) VALUES (%s, %s, %s, %s, %s, %s)",
                 (seq, kind, origin, summary[:500], batch_id, rows))
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seq)))


# --------------------------------------------------------------------------- imports (rpo_guard.sync)

class _Adapter:
    """Just enough of a sqlite3 connection for the consent-log and do-not-contact fills of
    rpo_guard.sync to run their statements on PostgreSQL (qmark -> format, IS NOT -> IS DISTINCT FROM)."""

    def __init__(self, conn):
        self.conn = conn

    @staticmethod
    def _sql(sql: str) -> str:
        import re
        sql = sql.replace("?", "%s")
        target = re.match(r"\s*INSERT INTO (\w+)", sql)
        if target:  # an upsert's condition names the target's columns explicitly in PostgreSQL
            sql = re.sub(r"(\w+) IS NOT excluded\.", rf"{target.group(1)}.\1 IS DISTINCT FROM excluded.", sql)
        return sql

    def execute(self, sql, params=()):
        return self.conn.execute(self._sql(sql), params)

    def executemany(self, sql, seq):
        cur = self.conn.cursor()
        cur.executemany(self._sql(sql), seq)
        return cur


def _insert_batch(conn, values: dict) -> int:
    cols = [c for c in BATCH_COLUMNS if c in values]
    return conn.execute(f"INSERT INTO batches ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
                        " RETURNING id", [values[c] for c in cols]).fetchone()[0]


def import_batch(cfg, batch: dict, fill, stats: dict) -> tuple[int, bool]:
    """One import of rpo_guard.sync, at the centre: ``(batch id, was a duplicate)``.

    ``batch`` holds the batches row's values (no id, rows, registered, seconds);
    ``fill(conn, batch_id)`` is sync's filler; ``stats`` receives its counts.
    """
    started = time.monotonic()
    origin = cfg.box_name
    with writer(cfg) as conn:
        with conn.transaction():
            dup = conn.execute("SELECT id FROM batches WHERE sha256 = %s AND kind = %s AND status = 'ok'"
                               " ORDER BY id LIMIT 1", (batch["sha256"], batch["kind"])).fetchone()
            if dup:
                return dup[0], True
            if batch["kind"] == "consultation":
                batch_id = conn.execute("SELECT nextval(pg_get_serial_sequence('batches', 'id'))").fetchone()[0]
                _copy_consultations(cfg, conn, batch_id, fill)
                seq = open_change(conn, "consultation", origin)
                _insert_batch(conn, {**batch, "id": batch_id})
            else:
                seq = open_change(conn, batch["kind"], origin)
                batch_id = _insert_batch(conn, batch)
                fill(_Adapter(conn), batch_id)
            rows = stats.get("rows", 0)
            conn.execute("UPDATE batches SET rows = %s, registered = %s, seconds = %s WHERE id = %s",
                         (rows, stats.get("registered"), round(time.monotonic() - started, 3), batch_id))
            close_change(conn, seq, batch["kind"], origin, f"{batch['kind']} {batch.get('source_file')}",
                         rows, batch_id)
    return batch_id, False


def _copy_consultations(cfg, conn, batch_id: int, fill) -> None:
    """Run sync's checks and staging into a scratch rpo.db, then COPY its rows to the centre."""
    scratch = tempfile.mkdtemp(prefix="rpo-guard-central-")
    try:
        from rpo_guard.register.schema import open_db
        db = open_db(os.path.join(scratch, "rpo.db"))
        sconn = db.conn
        sconn.execute("PRAGMA foreign_keys = OFF")
        sconn.execute("PRAGMA synchronous = OFF")
        sconn.execute("PRAGMA cache_size = -65536")
        try:
            sconn.execute("BEGIN")
            fill(sconn, batch_id)
            cur = sconn.execute("SELECT number, registered, registration_date FROM consultations"
                                " WHERE batch_id = ? ORDER BY number", (batch_id,))
            with conn.cursor().copy("COPY consultations (batch_id, number, registered, registration_date)"
                                    " FROM STDIN") as copy:
                prefix = f"{batch_id}\t"
                while True:
                    chunk = cur.fetchmany(20000)
                    if not chunk:
                        break
                    copy.write("".join(f"{prefix}{n}\t{r}\t{d if d is not None else chr(92) + 'N'}\n"
                                       for n, r, d in chunk))
            sconn.rollback()
        finally:
            sconn.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def record_failure(cfg, batch: dict) -> None:
    """A failed import attempt, kept at the centre for `status`. Best effort."""
    try:
        with writer(cfg) as conn, conn.transaction():
            seq = open_change(conn, batch["kind"], cfg.box_name)
            batch_id = _insert_batch(conn, {**batch, "rows": 0, "status": "failed"})
            close_change(conn, seq, batch["kind"], cfg.box_name, f"failed: {batch.get('error', '')}", 0, batch_id)
    except Exception:
        pass


# --------------------------------------------------------------------------- one-number writers

def list_add(cfg, table: str, e164: str, brand: str, note: str, who: str, at: str) -> bool:
    with writer(cfg) as conn, conn.transaction():
        seq = open_change(conn, f"{table}_add", cfg.box_name)
        n = conn.execute(f"INSERT INTO {table} (number, brand, {LIST_NOTE[table]}, added_by, added_at)"
                         " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (number, brand) WHERE removed_at IS NULL"
                         " DO NOTHING", (e164, brand or "", note, who, at)).rowcount
        close_change(conn, seq, f"{table}_add", cfg.box_name, f"{e164} {brand}", n)
    return n > 0


def list_remove(cfg, table: str, e164: str, brand: str, who: str, at: str) -> bool:
    with writer(cfg) as conn, conn.transaction():
        seq = open_change(conn, f"{table}_remove", cfg.box_name)
        n = conn.execute(f"UPDATE {table} SET removed_by = %s, removed_at = %s WHERE number = %s AND brand = %s"
                         " AND removed_at IS NULL", (who, at, e164, brand or "")).rowcount
        close_change(conn, seq, f"{table}_remove", cfg.box_name, f"{e164} {brand}", n)
    return n > 0


def _silent_call(conn, row: dict, key: str | None = None) -> int:
    return conn.execute(
        "INSERT INTO silent_calls (number, brand, at, on_day, uniqueid, source, recorded_by, recorded_at, origin_key)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (origin_key) DO NOTHING",
        (row["number"], row.get("brand") or "", row["at"], row["on_day"], row.get("uniqueid"), row.get("source"),
         row.get("recorded_by"), row["recorded_at"], key)).rowcount


def silent_call(cfg, row: dict) -> None:
    with writer(cfg) as conn, conn.transaction():
        seq = open_change(conn, "silent_call", cfg.box_name)
        _silent_call(conn, row)
        close_change(conn, seq, "silent_call", cfg.box_name, row["number"], 1)


# --------------------------------------------------------------------------- from the boxes

OUTBOX_KINDS = ("silent_call", "dnc_add")


def apply_outbox(conn, box: str, key: str, kind: str, payload: dict) -> int:
    """Apply one forwarded outbox entry once: the sequence number of the change that
    applied it (now, or at an earlier delivery of the same key)."""
    if kind not in OUTBOX_KINDS:
        raise CentralError(f"outbox entry {key}: unknown kind {kind!r}")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGE_LOCK,))  # serialises deliveries of one key
        done = conn.execute("SELECT seq FROM outbox_applied WHERE key = %s", (key,)).fetchone()
        if done:
            return done[0]
        seq = open_change(conn, kind, box)
        if kind == "silent_call":
            n = _silent_call(conn, payload, key)
        else:
            n = conn.execute(
                "INSERT INTO dnc (number, brand, reason, added_by, added_at, origin_key)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (number, brand) WHERE removed_at IS NULL DO NOTHING",
                (payload["number"], payload.get("brand") or "", payload.get("reason"), payload.get("added_by"),
                 payload["added_at"], key)).rowcount
        conn.execute("INSERT INTO outbox_applied (key, box, kind, seq) VALUES (%s, %s, %s, %s)", (key, box, kind, seq))
        close_change(conn, seq, kind, box, f"{payload.get('number')} (outbox {key})", n)
    return seq


AUDIT_COLUMNS = ("id", "at", "uniqueid", "channel", "callerid", "accountcode", "brand", "dialed", "e164",
                 "decision", "reason", "basis", "detail", "latency_ms", "via", "prev_hash", "hash")


def shipped_tail(conn, box: str) -> tuple[int, str | None]:
    row = conn.execute("SELECT id, hash FROM box_attempts WHERE box = %s ORDER BY id DESC LIMIT 1", (box,)).fetchone()
    return (row[0], row[1]) if row else (0, None)


def ship_attempts(conn, box: str, rows: list[tuple]) -> int:
    """Store a box's audit rows (AUDIT_COLUMNS order, ascending ids) in one transaction.

    A row already there with the same hash is skipped (a second delivery); one with
    another hash is refused: the box's audit.db was replaced or rewritten.

    The rows are inserted first and only those already there are compared, each found by
    its key: no join of the incoming rows with box_attempts, whose plan the planner may
    make a scan of the whole table when its statistics lag behind a fast-growing trail
    (a ship then cost time in proportion to the table, and the agents fell behind).
    """
    if not rows:
        return 0
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE box_attempts INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        with conn.cursor().copy(f"COPY incoming (box, {', '.join(AUDIT_COLUMNS)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row((box, *r))
        inserted = {r[0] for r in conn.execute(
            f"INSERT INTO box_attempts (box, {', '.join(AUDIT_COLUMNS)}) SELECT box, {', '.join(AUDIT_COLUMNS)}"
            " FROM incoming ORDER BY id ON CONFLICT (box, id) DO NOTHING RETURNING id")}
        again = {r[0]: r[-1] for r in rows if r[0] not in inserted}  # id -> hash, rows shipped before
        if again:
            held = conn.execute("SELECT id, hash FROM box_attempts WHERE box = %s AND id = ANY(%s) ORDER BY id",
                                (box, sorted(again))).fetchall()
            clash = next((i for i, h in held if again[i] != h), None)
            if clash is not None:
                raise CentralError(f"box {box}: audit row {clash} differs from the one shipped before "
                                   "(its audit.db was replaced or rewritten); nothing shipped")
    return len(inserted)


def report_box(conn, box: str, last_seq: int, confirmed_at: float | None, outbox_depth: int, pending: int,
               audit_local_id: int | None, skew: float | None, version: str) -> None:
    with conn.transaction():
        conn.execute(
            "INSERT INTO boxes (box, last_seq, confirmed_at, reported_at, outbox_depth, pending_batches, audit_local_id,"
            " skew_seconds, version) VALUES (%s, %s, to_timestamp(%s), now(), %s, %s, %s, %s, %s)"
            " ON CONFLICT (box) DO UPDATE SET last_seq = excluded.last_seq, confirmed_at = excluded.confirmed_at,"
            " reported_at = now(), outbox_depth = excluded.outbox_depth, pending_batches = excluded.pending_batches,"
            " audit_local_id = excluded.audit_local_id, skew_seconds = excluded.skew_seconds, version = excluded.version",
            (box, last_seq, confirmed_at, outbox_depth, pending, audit_local_id, skew, version))


def fleet_status(conn) -> dict:
    """Per box, as its agent last reported: sequence applied, lag (changes and seconds behind),
    staleness (seconds since its replica was confirmed, by the centre's clock), outbox depth,
    audit rows not yet shipped."""
    head, head_at = conn.execute("SELECT coalesce(max(seq), 0), max(at) FROM change_log").fetchone()
    boxes = []
    for r in conn.execute(
            "SELECT b.box, b.last_seq, extract(epoch FROM now() - b.confirmed_at), extract(epoch FROM now() - b.reported_at),"
            " b.outbox_depth, b.pending_batches, b.audit_local_id, b.skew_seconds, b.version,"
            " (SELECT coalesce(max(id), 0) FROM box_attempts a WHERE a.box = b.box),"
            " extract(epoch FROM (SELECT min(at) FROM change_log c WHERE c.seq > b.last_seq) - now())"
            " FROM boxes b ORDER BY b.box"):
        box, last_seq, stale, reported, depth, pending, audit_local, skew, version, shipped, oldest_missing = r
        boxes.append({
            "box": box, "last_seq": last_seq, "lag_changes": head - last_seq,
            "lag_seconds": round(-float(oldest_missing), 3) if oldest_missing is not None else 0.0,
            "staleness_seconds": round(float(stale), 3) if stale is not None else None,
            "reported_seconds_ago": round(float(reported), 3), "outbox_depth": depth,
            "pending_batches": pending, "audit_unshipped": max((audit_local or 0) - shipped, 0),
            "audit_shipped_id": shipped, "clock_skew_seconds": skew, "version": version})
    return {"head_seq": head, "head_at": head_at.isoformat() if head_at else None, "boxes": boxes}


def payload_json(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))
