"""A box's side of fleet mode, in its rpo.db: replica state, the outbox, consultations landing.

Tables (created by `rpo-guard init` and the agent in fleet mode; a single box never has them):

* ``fleet_replica`` (one row): the last change-log sequence applied, when the
  centre last confirmed the replica current (``confirmed_at``, this box's clock,
  read per call by rpo_guard.register.store), the centre's clock then, when the
  agent last ran.
* ``fleet_outbox``: writes made on the box during calls (silent calls, an agent's
  opt-out), applied locally at once with a negative id and forwarded by the agent
  under an idempotent key; once the change that applied the key at the centre is in
  the replica, the local row and the outbox entry go, in the same transaction.
* ``fleet_pending``: consultation batches whose rows are still landing, in chunks
  committed one at a time; the batch becomes visible (its ``batches`` row) in the
  transaction that lands its last chunk, so a lookup sees all of it or none.

Every change of the replica and its sequence number are committed together.
"""
from __future__ import annotations

import json
import uuid

from .central import BATCH_COLUMNS, TABLES, payload_json

TABLES_SQL = (
    "CREATE TABLE IF NOT EXISTS fleet_replica (id INTEGER PRIMARY KEY CHECK (id = 1), box TEXT NOT NULL,"
    " last_seq INTEGER NOT NULL DEFAULT 0, confirmed_at REAL, centre_at REAL, skew_seconds REAL,"
    " agent_alive_at REAL, last_error TEXT)",
    "CREATE TABLE IF NOT EXISTS fleet_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,"
    " kind TEXT NOT NULL, payload TEXT NOT NULL, local_table TEXT NOT NULL, created_at TEXT NOT NULL,"
    " applied_seq INTEGER)",
    "CREATE TABLE IF NOT EXISTS fleet_pending (batch_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL,"
    " batch TEXT NOT NULL, after TEXT NOT NULL DEFAULT '', rows_done INTEGER NOT NULL DEFAULT 0)",
)
LOCAL_TABLE = {"silent_call": "silent_calls", "dnc_add": "dnc"}


def ensure(conn, box: str) -> None:
    """Create the fleet tables of rpo.db (idempotent)."""
    with conn:
        for sql in TABLES_SQL:
            conn.execute(sql)
        conn.execute("INSERT OR IGNORE INTO fleet_replica (id, box, last_seq) VALUES (1, ?, 0)", (box,))


def open_replica(cfg):
    """The box's rpo.db as the agent and the local writers open it (schema and fleet tables)."""
    from rpo_guard.register.schema import open_db

    db = open_db(cfg.register_db, cfg.file_mode, cfg.group)
    db.conn.execute("PRAGMA busy_timeout = 10000")
    ensure(db.conn, cfg.box_name)
    return db.conn


def local_write(cfg, kind: str, row: dict) -> str:
    """Apply a write made during a call on this box at once and queue it for the centre; its key."""
    from datetime import datetime, timezone

    table = LOCAL_TABLE[kind]
    conn = open_replica(cfg)
    key = f"{cfg.box_name}:{uuid.uuid4()}"
    try:
        conn.execute("BEGIN IMMEDIATE")
        local_id = -conn.execute(
            "INSERT INTO fleet_outbox (key, kind, payload, local_table, created_at) VALUES (?, ?, ?, ?, ?)",
            (key, kind, payload_json(row), table, datetime.now(timezone.utc).isoformat(timespec="seconds"))).lastrowid
        cols = list(row)
        conn.execute(f"INSERT OR IGNORE INTO {table} (id, {', '.join(cols)}) VALUES (?{', ?' * len(cols)})",
                     (local_id, *row.values()))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return key


def state(conn) -> dict:
    row = conn.execute("SELECT box, last_seq, confirmed_at, centre_at, skew_seconds, agent_alive_at, last_error"
                       " FROM fleet_replica WHERE id = 1").fetchone()
    keys = ("box", "last_seq", "confirmed_at", "centre_at", "skew_seconds", "agent_alive_at", "last_error")
    out = dict(zip(keys, row)) if row else dict.fromkeys(keys)
    out["outbox_depth"] = conn.execute("SELECT COUNT(*) FROM fleet_outbox").fetchone()[0]
    out["outbox_unsent"] = conn.execute("SELECT COUNT(*) FROM fleet_outbox WHERE applied_seq IS NULL").fetchone()[0]
    out["pending_batches"] = conn.execute("SELECT COUNT(*) FROM fleet_pending").fetchone()[0]
    return out


# --------------------------------------------------------------------------- applying the centre's changes

def _upsert_sql(table: str, cols) -> str:
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "id")
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            f" ON CONFLICT (id) DO UPDATE SET {sets}")


def catch_up(conn, pg, clock) -> tuple[int, int]:
    """Apply every change after the replica's sequence, up to the centre's newest, in one
    SQLite transaction with the sequence reached and the confirmation time; returns
    (sequence reached, rows applied). Consultation batches become pending (see land_chunk)."""
    t0 = clock()  # everything committed at the centre before this moment is in the snapshot below
    last = conn.execute("SELECT last_seq FROM fleet_replica WHERE id = 1").fetchone()[0]
    fetched: dict[str, list] = {}
    with pg.transaction():
        pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        head, centre_now = pg.execute("SELECT coalesce(max(seq), 0), extract(epoch FROM now())::float8"
                                      " FROM change_log").fetchone()
        if head < last:
            from .schema import CentralError
            raise CentralError(f"the centre's change log ends at {head}, this replica has applied {last}: "
                               "the centre was restored from an older backup (reseed this box)")
        if head > last:
            for table, cols in TABLES.items():
                fetched[table] = pg.execute(f"SELECT {', '.join(cols)} FROM {table} WHERE changed_seq > %s"
                                            f" AND changed_seq <= %s ORDER BY id", (last, head)).fetchall()
            seqs = dict(pg.execute("SELECT batch_id, seq FROM change_log WHERE seq > %s AND seq <= %s"
                                   " AND batch_id IS NOT NULL", (last, head)).fetchall())
    rows = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, found in fetched.items():
            if table == "batches":
                upsert = _upsert_sql("batches", BATCH_COLUMNS)
                for r in found:
                    b = dict(zip(BATCH_COLUMNS, r))
                    if b["kind"] == "consultation" and b["status"] == "ok" and (b["rows"] or 0) > 0 \
                            and not conn.execute("SELECT 1 FROM batches WHERE id = ?", (b["id"],)).fetchone():
                        conn.execute("INSERT OR IGNORE INTO fleet_pending (batch_id, seq, batch) VALUES (?, ?, ?)",
                                     (b["id"], seqs.get(b["id"], head), json.dumps(b)))
                    else:
                        conn.execute(upsert, r)
                    rows += 1
                continue
            upsert = _upsert_sql(table, TABLES[table])
            for r in found:
                if table == "dnc" and r[7] is None:  # an active entry: a provisional local one gives way
                    conn.execute("DELETE FROM dnc WHERE id < 0 AND number = ? AND brand = ? AND removed_at IS NULL",
                                 (r[1], r[2]))
                conn.execute(upsert, r)
                rows += 1
        # local writes the centre has applied (at a change now in the replica) give way to its rows
        for key_id, table in conn.execute("SELECT id, local_table FROM fleet_outbox WHERE applied_seq <= ?",
                                          (head,)).fetchall():
            conn.execute(f"DELETE FROM {table} WHERE id = ?", (-key_id,))
            conn.execute("DELETE FROM fleet_outbox WHERE id = ?", (key_id,))
        now = clock()
        conn.execute("UPDATE fleet_replica SET last_seq = ?, confirmed_at = ?, centre_at = ?, skew_seconds = ?,"
                     " agent_alive_at = ?, last_error = NULL WHERE id = 1", (head, t0, centre_now, t0 - centre_now, now))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return head, rows


# Rows of one consultation batch, a chunk at a time in number order, aggregated by
# PostgreSQL into one JSON array and two fixed-width strings: SQLite inserts them with
# one statement (json_each), as a local import stages its rows.
_CHUNK_SQL = """
SELECT count(*), max(number), coalesce(json_agg(number ORDER BY number)::text, '[]'),
       coalesce(string_agg(registered::text, '' ORDER BY number), ''),
       coalesce(string_agg(coalesce(registration_date, '          '), '' ORDER BY number), ''),
       coalesce(bool_and(registration_date IS NULL OR length(registration_date) = 10), true)
  FROM (SELECT number, registered, registration_date FROM consultations
         WHERE batch_id = %s AND number > %s ORDER BY number LIMIT %s) s
"""
# The statuses and dates go as BLOBs: substr() on a BLOB counts bytes (O(1) to the offset),
# on TEXT it walks the characters (quadratic over a chunk).
_LAND = ("INSERT INTO consultations (number, batch_id, registered, registration_date)"
         " SELECT value, ?2, substr(?3, key + 1, 1) = x'31',"
         " nullif(CAST(substr(?4, 10 * key + 1, 10) AS TEXT), '          ')"
         " FROM json_each(?1) WHERE true ON CONFLICT (number, batch_id) DO NOTHING")
CHUNK_ROWS = 100_000


def land_chunk(conn, pg, chunk_rows: int = CHUNK_ROWS) -> bool:
    """Land the next chunk of the oldest pending consultation batch; False when none is pending."""
    row = conn.execute("SELECT batch_id, batch, after FROM fleet_pending ORDER BY seq, batch_id LIMIT 1").fetchone()
    if row is None:
        return False
    batch_id, batch, after = row
    with pg.transaction():
        n, last_number, numbers, registered, dates, fixed = pg.execute(
            _CHUNK_SQL, (batch_id, after, chunk_rows)).fetchone()
        slow = None
        if n and not fixed:
            slow = pg.execute("SELECT number, registered, registration_date FROM consultations WHERE batch_id = %s"
                              " AND number > %s ORDER BY number LIMIT %s", (batch_id, after, chunk_rows)).fetchall()
    conn.execute("BEGIN IMMEDIATE")
    try:
        if slow is not None:
            conn.executemany("INSERT INTO consultations (number, batch_id, registered, registration_date)"
                             " VALUES (?, ?, ?, ?) ON CONFLICT (number, batch_id) DO NOTHING",
                             [(num, batch_id, reg, d) for num, reg, d in slow])
        elif n:
            conn.execute(_LAND, (numbers, batch_id, registered.encode("ascii"), dates.encode("ascii")))
        if n < chunk_rows:  # the last chunk: the batch becomes visible with it
            b = json.loads(batch)
            conn.execute(_upsert_sql("batches", BATCH_COLUMNS), [b[c] for c in BATCH_COLUMNS])
            conn.execute("DELETE FROM fleet_pending WHERE batch_id = ?", (batch_id,))
            finished = True
        else:
            finished = False
            conn.execute("UPDATE fleet_pending SET after = ?, rows_done = rows_done + ? WHERE batch_id = ?",
                         (last_number, n, batch_id))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if finished:  # copy the batch into the database file now, so lookups do not read it through the WAL
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return True


def forward_outbox(conn, pg, box: str, limit: int = 500) -> int:
    """Send unsent outbox entries to the centre (idempotent keys); returns how many were applied."""
    from .central import apply_outbox

    sent = 0
    for key_id, key, kind, payload in conn.execute(
            "SELECT id, key, kind, payload FROM fleet_outbox WHERE applied_seq IS NULL ORDER BY id LIMIT ?",
            (limit,)).fetchall():
        seq = apply_outbox(pg, box, key, kind, json.loads(payload))
        with conn:
            conn.execute("UPDATE fleet_outbox SET applied_seq = ? WHERE id = ?", (seq, key_id))
        sent += 1
    return sent


def report(cfg, clock=None) -> dict:
    """This box's replica and, when the centre answers, every box as its agent last reported
    (for `rpo-guard status`). ``stale`` is what the next call would see."""
    import sqlite3
    import time
    from urllib.parse import quote

    clock = clock or time.time
    out: dict = {"box": cfg.box_name, "max_staleness_seconds": cfg.max_staleness_seconds}
    try:
        conn = sqlite3.connect(f"file:{quote(cfg.register_db)}?mode=ro", uri=True, timeout=5)
        try:
            out.update(state(conn))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        out["replica_error"] = f"{exc} (run `rpo-guard init` and start `rpo-guard fleet agent`)"
    confirmed = out.get("confirmed_at")
    age = None if confirmed is None else clock() - confirmed
    out["staleness_seconds"] = None if age is None else round(age, 3)
    out["stale"] = age is None or age > cfg.max_staleness_seconds or age < -5
    try:
        from .central import fleet_status, writer
        with writer(cfg) as pg:
            out["centre"] = fleet_status(pg)
    except Exception as exc:  # the centre's view is a bonus; the box's own state decides calls
        out["centre_error"] = f"{type(exc).__name__}: {exc}"
    return out
