"""The audit log of call attempts (audit.db): one row per attempt, hash-chained.

A separate SQLite file from the register: the register may be rebuilt, the
audit log is append-only and never replaced. Triggers refuse UPDATE and
DELETE (only ``rpo-guard audit prune`` lifts the DELETE one, inside its own
transaction). Written with the stdlib driver (this runs on every call); the
schema is plain SQL kept here so a call can create the file if it is missing.

Tamper evidence: every row carries ``prev_hash`` (the ``hash`` of the row
before it; for the very first row 64 zeros, after a prune the ``last_hash``
of the newest checkpoint) and ``hash``::

    hash = sha256_hex(prev_hash + "\\n" + canonical(row))
    canonical(row) = JSON array [id, at, uniqueid, channel, callerid,
        accountcode, brand, dialed, e164, decision, reason, basis, detail,
        latency_ms, via], compact separators, UTF-8, non-ASCII unescaped
        (Python ``json.dumps(values, ensure_ascii=False, separators=(",", ":"))``),
        text columns as text, latency_ms as a float, NULL as null.

Ids are consecutive (the writer gives id = previous id + 1), so a gap is a
deleted row. The previous hash and the id are read inside the same
``BEGIN IMMEDIATE`` transaction that inserts the rows: SQLite holds the one
write lock from that read to the commit, so any number of AGI processes (and
the FastAGI server) chain correctly without any other coordination. A
long-lived writer that knows the tail from its own last commit inserts a
single row with one statement guarded by ``sqlite_sequence``, which SQLite
checks under the same write lock.
"""
from __future__ import annotations

import math
import os
import sqlite3

# This module is imported on every call. hashlib loads OpenSSL (~2 ms) and
# json compiles its machinery (~1 ms): the interpreter's own SHA-256 module
# and the small JSON writer below give the same bytes for the types a row
# holds, and hand anything else to the json module itself.
try:
    from _sha2 import sha256 as _sha256  # CPython >= 3.12
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # CPython 3.11
    except ImportError:  # pragma: no cover - other interpreters
        from hashlib import sha256 as _sha256

AUDIT_SCHEMA_VERSION = 3
GENESIS = "0" * 64

COLUMNS = ("at", "uniqueid", "channel", "callerid", "accountcode", "brand", "dialed", "e164",
           "decision", "reason", "basis", "detail", "latency_ms", "via")
HASHED = ("id",) + COLUMNS
_LATENCY = COLUMNS.index("latency_ms")
_BASIS = COLUMNS.index("basis")

NO_DELETE_TRIGGER = """CREATE TRIGGER IF NOT EXISTS attempts_no_delete BEFORE DELETE ON attempts
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only (old rows leave only through rpo-guard audit prune)'); END"""

# The hash column has no UNIQUE index (version 1 had one): the chain already makes
# every hash distinct, and the index cost each row a random B-tree page, written to
# the WAL at every commit and copied back at every checkpoint (version 2, measured on
# an empty log: 15 us less CPU per row; at 1,000 calls/s through the FastAGI server,
# p99 1.7-1.9 -> 1.0-1.1 ms, bench/fastagi_load.py).
ATTEMPTS_TABLE = """CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- consecutive: previous id + 1
    at          TEXT NOT NULL,      -- ISO 8601 with UTC offset, in the rules' timezone
    uniqueid    TEXT,               -- Asterisk agi_uniqueid
    channel     TEXT,
    callerid    TEXT,
    accountcode TEXT,
    brand       TEXT,
    dialed      TEXT,               -- the string the dialplan passed
    e164        TEXT,               -- NULL when it was not a valid number
    decision    TEXT NOT NULL CHECK (decision IN ('ALLOW', 'BLOCK')),
    reason      TEXT NOT NULL,
    basis       TEXT,               -- JSON: the consultation, consent or DNC entry that decided
    detail      TEXT,
    latency_ms  REAL,
    via         TEXT,               -- agi | fastagi
    prev_hash   TEXT NOT NULL,      -- hash of the previous row (chain)
    hash        TEXT NOT NULL       -- sha256 over prev_hash and this row (see audit_log.py)
)"""

# The per-number index. It covers the attempt caps' count (audit/attempts.py: e164, decision,
# at, brand and via), so a count reads a few index pages and no row; version 2 indexed e164
# alone, and each count then read every row of the number from the table (about 26 us a
# count against 11 with a 290,000-row log; cap on/off 1.17x -> 1.12x in bench/brand_policies.py).
# Lookups by number (audit list --number) use its first column as before.
E164_INDEX = "CREATE INDEX IF NOT EXISTS attempts_e164 ON attempts(e164, decision, at, brand, via)"

# What hangs on the attempts table: made after it, and again after a rebuild.
ATTEMPTS_OBJECTS = (
    "CREATE INDEX IF NOT EXISTS attempts_time ON attempts(julianday(at))",
    E164_INDEX,
    """CREATE TRIGGER IF NOT EXISTS attempts_no_update BEFORE UPDATE ON attempts
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    NO_DELETE_TRIGGER,
    # Views for sqlite-utils / Datasette / auditors' SQL.
    """CREATE VIEW IF NOT EXISTS attempts_explained AS
SELECT id, at, strftime('%Y-%m-%dT%H:%M:%fZ', at) AS at_utc, substr(at, 1, 10) AS day,
       uniqueid, channel, callerid, accountcode, brand, dialed, e164, decision, reason,
       json_extract(basis, '$.kind') AS basis_kind,
       json_extract(basis, '$.batch_id') AS batch_id,
       json_extract(basis, '$.consulted_on') AS consulted_on,
       json_extract(basis, '$.consent_id') AS consent_id,
       json_extract(basis, '$.given_at') AS consent_given_at,
       json_extract(basis, '$.evidence') AS evidence,
       json_extract(basis, '$.dnc_id') AS dnc_id,
       detail, latency_ms, via, basis, prev_hash, hash
FROM attempts""",
    """CREATE VIEW IF NOT EXISTS daily_counts AS
SELECT substr(at, 1, 10) AS day, brand, decision, reason, count(*) AS attempts
FROM attempts GROUP BY 1, 2, 3, 4""",
)

# One row per prune: the pruned stretch of the chain, so what remains verifies.
CHECKPOINTS_OBJECTS = (
    """CREATE TABLE IF NOT EXISTS checkpoints (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    pruned_at       TEXT NOT NULL,  -- when (ISO 8601 with offset)
    pruned_by       TEXT NOT NULL,  -- operating-system user
    before          TEXT NOT NULL,  -- the cut: rows before this moment were removed
    first_id        INTEGER NOT NULL,
    last_id         INTEGER NOT NULL,
    rows            INTEGER NOT NULL,
    first_prev_hash TEXT NOT NULL,  -- prev_hash of the first removed row
    last_hash       TEXT NOT NULL,  -- hash of the last removed row = prev_hash of the next one
    first_at        TEXT,
    last_at         TEXT,
    counts          TEXT NOT NULL   -- JSON [[day, brand, decision, reason, n], ...] of the removed rows
)""",
    """CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END""",
)

SCHEMA_STATEMENTS = (ATTEMPTS_TABLE, *ATTEMPTS_OBJECTS, *CHECKPOINTS_OBJECTS)

_ALL = ", ".join(("id",) + COLUMNS + ("prev_hash", "hash"))

# Upgrade steps of audit.db, as rpo_guard.register.schema.STEPS (run by rpo_guard.migrate, each
# in one transaction). Step 2 rebuilds attempts without the UNIQUE index on hash
# (SQLite cannot drop a column constraint): the old table is renamed aside (its
# sqlite_sequence row follows it, and is taken back), the rows are copied in id
# order with their hashes unchanged (the chain still verifies), then the old table,
# its indexes and triggers go, and they are made anew, with the same SQL as in a
# fresh database.
AUDIT_STEPS: dict[int, tuple[str, tuple[str, ...]]] = {
    2: ("attempts rebuilt without the UNIQUE index on hash (a random index page per row; "
        "the chain keeps hashes distinct); rows, ids, hashes and the id sequence unchanged",
        ("DROP VIEW IF EXISTS attempts_explained",
         "DROP VIEW IF EXISTS daily_counts",
         "ALTER TABLE attempts RENAME TO attempts_v1",
         ATTEMPTS_TABLE,
         f"INSERT INTO attempts ({_ALL}) SELECT {_ALL} FROM attempts_v1 ORDER BY id",
         "DELETE FROM sqlite_sequence WHERE name = 'attempts'",
         "UPDATE sqlite_sequence SET name = 'attempts' WHERE name = 'attempts_v1'",
         "DROP TABLE attempts_v1",
         *ATTEMPTS_OBJECTS)),
    3: ("the e164 index covers the attempt caps' count (e164, decision, at, brand, via): "
        "a count reads no row; rows unchanged",
        ("DROP INDEX IF EXISTS attempts_e164",
         E164_INDEX)),
}


_ESCAPES = {ord(c): e for c, e in (('"', '\\"'), ("\\", "\\\\"), ("\n", "\\n"), ("\r", "\\r"),
                                     ("\t", "\\t"), ("\b", "\\b"), ("\f", "\\f"))}
for _i in range(0x20):
    _ESCAPES.setdefault(_i, "\\u%04x" % _i)
_ESCAPES_ASCII = {**_ESCAPES, 0x7F: "\\u007f"}


def _utf8_str(s: str) -> str:
    return '"' + s.translate(_ESCAPES) + '"'


def _ascii_char(c: str) -> str:
    n = ord(c)
    if n < 0x80:
        return c
    if n < 0x10000:
        return "\\u%04x" % n
    n -= 0x10000
    return "\\u%04x\\u%04x" % (0xD800 | (n >> 10), 0xDC00 | (n & 0x3FF))


def _ascii_str(s: str) -> str:
    s = s.translate(_ESCAPES_ASCII)
    return '"' + (s if s.isascii() else "".join(map(_ascii_char, s))) + '"'


class _Unusual(Exception):
    pass


def _json(v, item_sep: str, key_sep: str, enc=_utf8_str) -> str:
    """json.dumps(v, sort_keys=True, separators=(item_sep, key_sep), allow_nan=False), with
    ensure_ascii as ``enc`` says, for str, int, float, bool, None, list, tuple and str-keyed
    dict; _Unusual for anything else."""
    t = type(v)
    if t is str:
        return enc(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if t is float:
        if not math.isfinite(v):
            raise _Unusual
        return float.__repr__(v)
    if t is list or t is tuple:
        return "[" + item_sep.join(_json(x, item_sep, key_sep, enc) for x in v) + "]"
    if t is dict:
        if not all(type(k) is str for k in v):
            raise _Unusual
        return "{" + item_sep.join(enc(k) + key_sep + _json(v[k], item_sep, key_sep, enc)
                                   for k in sorted(v)) + "}"
    raise _Unusual


# json's C encoder, once use_json_module() has been called (same bytes as _json).
_dump_basis = None
_dump_row = None


def use_json_module() -> None:
    """Encode rows with the json module's C encoder from now on: the same bytes
    as the small writer below, in a fraction of the time. For long-running
    writers (the FastAGI server); a process AGI writes one row and keeps the
    2.5 ms import of json off its path."""
    global _dump_basis, _dump_row
    import json
    _dump_basis = _reused(json.JSONEncoder(sort_keys=True))
    _dump_row = _reused(json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False))


def _reused(enc):
    """``enc.encode`` through one C encoder made once: ``JSONEncoder.encode`` makes a
    new one (and a closure) for every call (a row: 1.7 -> 1.0 us). Rows and bases
    hold no cycles, so it keeps no markers. Where json has no C encoder, or its
    encoder takes other arguments or gives other bytes than ``enc.encode`` on a
    probe (another Python), ``enc.encode`` itself."""
    from json import encoder as mod
    try:
        c = mod.c_make_encoder(None, enc.default, mod.encode_basestring_ascii if enc.ensure_ascii
                               else mod.encode_basestring, None, enc.key_separator, enc.item_separator,
                               enc.sort_keys, enc.skipkeys, enc.allow_nan)
        probe = [1, 0.5, None, True, "é\n", {"b": [], "a": {}}]
        if "".join(c(probe, 0)) != enc.encode(probe):
            return enc.encode
    except Exception:  # no C encoder (None is not callable) or another signature
        return enc.encode
    join = "".join
    return lambda o: join(c(o, 0))


def basis_text(basis) -> str:
    """The stored text of the basis column: ``json.dumps(basis or {}, sort_keys=True)``."""
    if _dump_basis is not None:
        return _dump_basis(basis or {})
    try:
        return _json(basis or {}, ", ", ": ", _ascii_str)
    except (_Unusual, RecursionError):
        import json
        return json.dumps(basis or {}, sort_keys=True)


def canonical(row_id: int, values) -> bytes:
    """The bytes a row's hash covers (besides prev_hash); values in COLUMNS order.

    Equal to ``json.dumps([row_id, *values], ensure_ascii=False,
    separators=(",", ":"), allow_nan=False).encode("utf-8")``.
    """
    if _dump_row is not None:
        return _dump_row([row_id, *values]).encode("utf-8")
    try:
        text = _json([row_id, *values], ",", ":")
    except _Unusual:
        import json
        text = json.dumps([row_id, *values], ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def row_hash(prev_hash: str, row_id: int, values) -> str:
    return _sha256(prev_hash.encode("ascii") + b"\n" + canonical(row_id, values)).hexdigest()


def chain_tail(conn) -> tuple[int, str]:
    """(last id ever given, hash to chain onto).

    The hash is the newest row's, else the newest checkpoint's, else GENESIS.
    The id also honours sqlite_sequence, so rows deleted from the end by
    hand leave a visible gap instead of having their ids reused.
    """
    r = conn.execute("SELECT id, hash FROM attempts ORDER BY id DESC LIMIT 1").fetchone()
    if r is None:
        r = conn.execute("SELECT last_id, last_hash FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
    last_id, last_hash = (r[0], r[1]) if r is not None else (0, GENESIS)
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'attempts'").fetchone()
    if seq is not None and seq[0] > last_id:
        last_id = seq[0]
    return last_id, last_hash


_TEXT_OR_NULL = frozenset({str, type(None)})


def values_of(row: dict) -> list:
    """The row's COLUMNS values exactly as SQLite will store and return them: text
    (``str()`` of anything else) or NULL, latency_ms a finite float or NULL, basis
    its JSON text. (Checked without a Python loop over the columns: the usual row
    is all text already.)"""
    values = list(map(row.get, COLUMNS))
    latency = values[_LATENCY]
    values[_LATENCY] = values[_BASIS] = None
    if not _TEXT_OR_NULL.issuperset(map(type, values)):
        values = [v if v is None or isinstance(v, str) else str(v) for v in values]
    if latency is not None:
        latency = float(latency)
        values[_LATENCY] = latency if math.isfinite(latency) else None
    values[_BASIS] = basis_text(row.get("basis"))
    return values


SYNCHRONOUS = ("normal", "full")


class AuditLog:
    """The writer. ``synchronous``: ``normal`` (default) syncs the WAL at
    checkpoints only: a commit survives any crash of the process; on a power
    loss or OS crash the newest commits may be lost but the file and the
    chain stay whole. ``full`` syncs on every commit: no record is lost even
    then, but it holds the write lock through an fsync, so concurrent calls
    wait longer for it (and a call whose attempt cannot be written within
    ``busy_timeout_ms`` is refused).
    """

    def __init__(self, path: str, busy_timeout_ms: int = 2000, file_mode: int = 0o640,
                 synchronous: str = "normal", group: str = ""):
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        from rpo_guard.perms import create_file, fix_companions

        path = os.fspath(path)
        new = create_file(path, file_mode, group)  # mode and group set before any row lands
        self.conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000,
                                    isolation_level=None, check_same_thread=False)
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version != AUDIT_SCHEMA_VERSION:
            self._create(version)
            if new:
                fix_companions(path, file_mode, group)
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        # The chain's tail (last id, its hash) after our last commit. It is still the
        # tail while sqlite_sequence says no id was given since: AUTOINCREMENT raises
        # seq with every row any connection inserts, and a row deleted from the end
        # does not lower it.
        self._tail = None
        self._holding = False  # the write lock taken by write_lock(), for the next append

    def write_lock(self) -> "_WriteLock":
        """Take the write lock now and keep it for the next :meth:`append_many`, which
        commits under it (a context manager: an exception in the block gives the lock
        back). The process AGI counts a number's attempts under it, so that two AGIs
        checking one number under a cap count and append one after the other."""
        return _WriteLock(self)

    def _create(self, version: int) -> None:
        if version > AUDIT_SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"audit schema version {version} is newer than this rpo_guard knows "
                                        f"({AUDIT_SCHEMA_VERSION}): upgrade rpo_guard")
        if version:
            raise sqlite3.DatabaseError(f"audit schema version {version}, this rpo_guard needs "
                                        f"{AUDIT_SCHEMA_VERSION} (run `rpo-guard migrate`)")
        self.conn.execute("PRAGMA journal_mode = WAL")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for sql in SCHEMA_STATEMENTS:
                self.conn.execute(sql)
            self.conn.execute(f"PRAGMA user_version = {AUDIT_SCHEMA_VERSION}")
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    _INSERT = (f"INSERT INTO attempts (id, {', '.join(COLUMNS)}, prev_hash, hash) "
               f"VALUES ({', '.join('?' * (len(COLUMNS) + 3))})")
    # One row in one statement, written only if the chain's tail is still the one it
    # was hashed onto: SQLite checks the guard and inserts under the same write lock.
    _INSERT_ON_TAIL = (f"INSERT INTO attempts (id, {', '.join(COLUMNS)}, prev_hash, hash) "
                       f"SELECT {', '.join('?' * (len(COLUMNS) + 3))} "
                       "WHERE (SELECT seq FROM sqlite_sequence WHERE name = 'attempts') = ?")
    _SEQ = "SELECT seq FROM sqlite_sequence WHERE name = 'attempts'"

    def append(self, row: dict) -> int:
        """Record one attempt; returns its id."""
        return self.append_many([row])[0]

    def append_many(self, rows: list[dict]) -> list[int]:
        """Record several attempts in one transaction; returns their ids in order.

        The chain's tail is read after the write lock is taken, so concurrent
        writers (processes or threads with their own AuditLog) never fork it.
        A long-lived writer keeps the tail of its own last commit and reads it
        again only when sqlite_sequence shows that another connection wrote;
        a single row then takes one statement, its guard checked under the
        write lock (no BEGIN, tail read or COMMIT round trips).
        """
        prepared = [values_of(r) for r in rows]
        conn = self.conn
        tail, self._tail = self._tail, None  # only a clean commit restores it
        holding, self._holding = self._holding, False
        if tail is not None and len(prepared) == 1 and not holding:
            last_id, prev = tail
            h = row_hash(prev, last_id + 1, prepared[0])
            if conn.execute(self._INSERT_ON_TAIL, (last_id + 1, *prepared[0], prev, h, last_id)).rowcount == 1:
                self._tail = (last_id + 1, h)
                return [last_id + 1]
            tail = None  # another writer got in first: read the tail below
        try:
            if not holding:
                conn.execute("BEGIN IMMEDIATE")
            seq = conn.execute(self._SEQ).fetchone() if tail is not None else None
            last_id, prev = tail if seq is not None and seq[0] == tail[0] else chain_tail(conn)
            records = []
            for values in prepared:
                last_id += 1
                h = row_hash(prev, last_id, values)
                records.append((last_id, *values, prev, h))
                prev = h
            conn.executemany(self._INSERT, records)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._tail = (last_id, prev)
        return [r[0] for r in records]

    def release(self) -> None:
        """Give back a write lock taken by :meth:`write_lock` without appending."""
        self._holding = False
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


class _WriteLock:
    """``with log.write_lock():`` BEGIN IMMEDIATE on entry; kept on a clean exit (the next
    append commits), given back on an exception."""

    def __init__(self, log: AuditLog):
        self.log = log

    def __enter__(self) -> AuditLog:
        self.log.release()
        self.log.conn.execute("BEGIN IMMEDIATE")
        self.log._holding = True
        return self.log

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.log.release()
        return False
