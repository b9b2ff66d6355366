"""Imports into the register database: consultation results, consent log, DNC.

It reads best whole: every import shares one transaction discipline (the
batch record, the staging tables, the all-or-nothing commit), and split
across files the reader would lose the thread from file to commit. The file
readers are in :mod:`rpo_guard.register.sources`.

Every import is all or nothing and streams: rows are read and checked one by one,
written in chunks inside ONE write transaction of the WAL database (memory does not
grow with the file). The first bad row raises :class:`ImportFailed` naming
file, line and field, the transaction is rolled back and nothing is left of
the file. A lookup sees the data from before or after the import, never half
of it; readers are never blocked (WAL); a kill -9 at any point leaves the
previous data intact (uncommitted WAL frames are ignored on recovery). The
same file (by sha256) imported twice is a no-op. Every attempt, failed ones
included, is recorded in ``batches``.

Consultation results come in three shapes:

* ``status``: a status word per number;
* ``registered``: only the registered numbers, with the sent list
  (``sent``): every other sent number is not registered;
* ``cleared``: only the cleared (callable) numbers, with the sent list:
  every other sent number is registered.

How a sender's files are read (encoding, delimiter, header, column names,
status words) is a :class:`rpo_guard.register.sources.Source`, from ``[source NAME]`` config sections;
the readers are in :mod:`rpo_guard.register.sources`.
Number cells are read as text (no type detection), so the leading 0 of
``0612345678`` survives; they are normalized with
:func:`rpo_guard.rules.fastnum.bulk_normalizer`, which gives the answers of
:func:`rpo_guard.rules.numbers.normalize`.
"""
from __future__ import annotations

import getpass
import itertools
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo

from rpo_guard.register.sources import (
    SHAPES,
    ImportFailed,
    Table,
    manifest_path,
    numbered_records,
    parse_when,
    read_manifest,
    scan,
    source_for,
)
from rpo_guard.rules.decision import CONSENT_KINDS, KIND_OPTOUT
from rpo_guard.rules.numbers import InvalidNumber

IMPORT_CACHE_KIB = 64 * 1024          # page cache of the importing connection


@dataclass(frozen=True)
class ImportResult:
    batch_id: int | None
    rows: int
    skipped_duplicate_file: bool
    message: str
    registered: int = 0
    skipped_rows: tuple[str, ...] = ()


# --------------------------------------------------------------------------- helpers

def _now(tz: str) -> datetime:
    return datetime.now(ZoneInfo(tz))


def _normalizer(cfg) -> Callable[[str], str]:
    from rpo_guard.rules.fastnum import bulk_normalizer
    return bulk_normalizer(cfg.strip_prefixes, cfg.default_region)


def _writer(cfg):
    """The importing connection: schema applied, big page cache, patient lock wait."""
    from rpo_guard.register.schema import open_db

    db = open_db(cfg.register_db, cfg.file_mode, cfg.group)
    conn = db.conn
    conn.execute("PRAGMA busy_timeout = 600000")  # wait for another import rather than fail
    conn.execute(f"PRAGMA cache_size = -{IMPORT_CACHE_KIB}")
    conn.execute("PRAGMA journal_size_limit = 67108864")  # the WAL shrinks back after a big import
    conn.execute("PRAGMA foreign_keys = OFF")
    return db


def _record_failure(cfg, kind: str, path: Path, digest: str | None, shape: str, message: str,
                    consulted_on=None, brand: str = "", who: str | None = None) -> None:
    """A failed attempt, so that `rpo-guard status` can report it. Best effort."""
    if cfg.central:  # fleet mode: the centre keeps it (docs/fleet.md)
        from rpo_guard.fleet import central
        central.record_failure(cfg, {
            "kind": kind, "source_file": str(path), "sha256": digest, "shape": shape,
            "consulted_on": consulted_on.isoformat() if consulted_on else None, "brand": brand or "",
            "imported_by": who or getpass.getuser(), "imported_at": _now(cfg.timezone).isoformat(timespec="seconds"),
            "error": message})
        return
    try:
        db = _writer(cfg)
        with db.conn:
            db.conn.execute(
                "INSERT INTO batches (kind, source_file, sha256, shape, rows, consulted_on, brand, imported_by,"
                " imported_at, status, error) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, 'failed', ?)",
                (kind, str(path), digest, shape, consulted_on.isoformat() if consulted_on else None, brand or "",
                 who or getpass.getuser(), _now(cfg.timezone).isoformat(timespec="seconds"), message))
        db.conn.close()
    except Exception:  # the import already failed; its message matters more than this record
        pass


def _already(conn, digest: str, kind: str) -> int | None:
    row = conn.execute("SELECT id FROM batches WHERE sha256 = ? AND kind = ? AND status = 'ok' ORDER BY id LIMIT 1",
                       (digest, kind)).fetchone()
    return row[0] if row else None


@dataclass
class _Batch:
    kind: str
    path: Path
    digest: str
    shape: str
    encoding: str
    who: str
    consulted_on: date | None = None
    brand: str = ""
    valid_until: date | None = None
    sent_file: str | None = None
    sent_sha256: str | None = None
    stats: dict = field(default_factory=dict)


def _transaction(cfg, b: _Batch, fill: Callable) -> tuple[int, bool]:
    """Run ``fill(conn, batch_id)`` in one write transaction; (batch id, was a duplicate).

    In fleet mode the transaction is the central PostgreSQL's (rpo_guard.fleet.central):
    the same checks, one change-log entry for the whole file, nothing written to rpo.db
    (the fleet agent brings it back as a replica)."""
    if cfg.central:
        from rpo_guard.fleet import central
        return central.import_batch(cfg, {
            "kind": b.kind, "source_file": str(b.path), "sha256": b.digest, "shape": b.shape,
            "consulted_on": b.consulted_on.isoformat() if b.consulted_on else None, "brand": b.brand or "",
            "valid_until": b.valid_until.isoformat() if b.valid_until else None, "imported_by": b.who,
            "imported_at": _now(cfg.timezone).isoformat(timespec="seconds"), "status": "ok", "encoding": b.encoding,
            "sent_file": b.sent_file, "sent_sha256": b.sent_sha256}, fill, b.stats)
    db = _writer(cfg)
    conn = db.conn
    started = time.monotonic()
    try:
        conn.execute("BEGIN IMMEDIATE")
        dup = _already(conn, b.digest, b.kind)
        if dup is not None:
            conn.rollback()
            return dup, True
        cur = conn.execute(
            "INSERT INTO batches (kind, source_file, sha256, shape, rows, consulted_on, brand, valid_until,"
            " imported_by, imported_at, status, encoding, sent_file, sent_sha256)"
            " VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, 'ok', ?, ?, ?)",
            (b.kind, str(b.path), b.digest, b.shape, b.consulted_on.isoformat() if b.consulted_on else None,
             b.brand or "", b.valid_until.isoformat() if b.valid_until else None, b.who,
             _now(cfg.timezone).isoformat(timespec="seconds"), b.encoding, b.sent_file, b.sent_sha256))
        batch_id = cur.lastrowid
        fill(conn, batch_id)
        conn.execute("UPDATE batches SET rows = ?, registered = ?, seconds = ? WHERE id = ?",
                     (b.stats.get("rows", 0), b.stats.get("registered"), round(time.monotonic() - started, 3),
                      batch_id))
        conn.commit()
        # Copy the import into the database now, without blocking readers: if
        # this connection is the last one open, closing it checkpoints what is
        # left under an exclusive lock, which would make a lookup opening the
        # file at that moment wait.
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return batch_id, False
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    finally:
        conn.close()


# --------------------------------------------------------------------------- consultations

def import_consultation(cfg, path: Path, consulted_on: date, brand: str = "", who: str | None = None,
                        db=None, *, shape: str = "status", sent: Path | None = None, source: str | None = None,
                        skip_invalid: bool = False, progress: Callable[[int, int], None] | None = None,
                        encoding: str | None = None) -> ImportResult:
    """Import one consultation result (see the module doc for the shapes).

    ``progress(bytes_done, bytes_total)`` is called now and then. Raises
    :class:`ImportFailed`; the failed attempt is recorded in ``batches``.
    """
    path = Path(path)
    who = who or getpass.getuser()
    digest = None
    try:
        if shape not in SHAPES:
            raise ImportFailed(f"{path}: unknown shape {shape!r} (one of {', '.join(SHAPES)})")
        if shape != "status" and sent is None:
            raise ImportFailed(f"{path}: a {shape!r} result lists only some numbers: give the sent list (--sent)")
        if consulted_on is None:
            raise ImportFailed(f"{path}: no consultation date: give --date or a manifest "
                               f"{manifest_path(path).name} with \"date\" (never assumed to be today)")
        today = _now(cfg.timezone).date()
        if consulted_on > today:
            raise ImportFailed(f"{path}: consultation date {consulted_on} is in the future")
        valid_until = consulted_on + timedelta(days=cfg.validity_days - 1)
        if valid_until < today:
            raise ImportFailed(f"{path}: consultation date {consulted_on} is older than the validity "
                               f"window ({cfg.validity_days} days): it would cover no call")
        src = source_for(cfg, source, encoding=encoding)
        digest, detected, size, quoted = scan(path)
        enc = detected if src.encoding == "auto" else src.encoding
        b = _Batch("consultation", path, digest, shape, enc, who, consulted_on, brand or "", valid_until)
        if size == 0:
            raise ImportFailed(f"{path}: the file is empty")
        sent_info = None
        if sent is not None:
            sent = Path(sent)
            s_digest, s_detected, s_size, s_quoted = scan(sent)
            if s_size == 0:
                raise ImportFailed(f"{sent}: the sent list is empty")
            b.sent_file, b.sent_sha256 = str(sent), s_digest
            sent_info = (sent, s_detected if src.encoding == "auto" else src.encoding, s_size, s_quoted)
            if shape == "status":
                sent_info = None  # a status per number needs no sent list; kept for the record only
        norm = _normalizer(cfg)
        skipped: list[str] = []
        total = size + (sent_info[2] if sent_info else 0)

        def fill(conn, batch_id):
            if shape == "status":
                _fill_status(conn, batch_id, path, src, enc, quoted, norm, skip_invalid, skipped, b.stats,
                             lambda done: progress(done, total) if progress else None)
            else:
                _fill_partial(conn, batch_id, shape, path, src, enc, quoted, sent_info, norm, skip_invalid, skipped,
                              b.stats, lambda done: progress(done, total) if progress else None)

        batch_id, dup = _transaction(cfg, b, fill)
    except ImportFailed as exc:
        _record_failure(cfg, "consultation", path, digest, shape, str(exc), consulted_on, brand, who)
        raise
    if dup:
        return ImportResult(batch_id, 0, True, f"{path}: already imported as batch {batch_id} (same sha256); "
                                               "nothing to do")
    rows, reg = b.stats["rows"], b.stats["registered"]
    msg = (f"{path}: batch {batch_id}: {rows} number{'' if rows == 1 else 's'} consulted on {consulted_on} ({reg} registered), "
           f"valid until {valid_until}" + (f", brand {brand}" if brand else ", shared by every brand"))
    if skipped:
        msg += f"; {len(skipped)} invalid row(s) skipped"
    return ImportResult(batch_id, rows, False, msg, reg, tuple(skipped))


# Rows are checked in Python and appended to a TEMP staging table (cheap appends,
# on the temp database, not in the WAL); one INSERT ... SELECT ... ORDER BY number
# then writes them into the register in key order, which keeps the b-tree pages
# hot in the cache however big the file (random-order inserts of 10M keys are
# several times slower). Constant memory: SQLite's sorter spills to temp files.
#
# The appends go a chunk at a time (_Stager): one INSERT ... SELECT FROM
# json_each(?) per chunk of up to STAGE_CHUNK rows costs ~0.1 us a row, where
# an executemany step per row costs ~1 us (binding, step and reset per row).

_STAGE_TO_REGISTER = (
    "INSERT INTO consultations (number, batch_id, registered, registration_date)"
    " SELECT number, ?, registered, registration_date FROM temp.stage WHERE true ORDER BY number"
    " ON CONFLICT (number, batch_id) DO UPDATE SET registered = NULL"
    " WHERE registered IS NOT excluded.registered")  # a conflicting duplicate: NOT NULL fails

STAGE_CHUNK = 1 << 14                 # rows per INSERT into a staging table (at most); a progress call each
NO_DATE = " " * 10                    # a row without registration date, in the chunk's dates


def _stage(conn, name: str, columns: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS temp.{name}")
    conn.execute(f"CREATE TEMP TABLE {name} ({columns})")


def _json_strings(items: list[str]) -> str:
    """``json.dumps(items)``, 2-3x cheaper for strings without quote or backslash (E.164 numbers)."""
    s = '","'.join(items)
    if "\\" in s or s.count('"') != 2 * len(items) - 2:
        return json.dumps(items)
    return f'["{s}"]'


class _Stager:
    """Rows appended to a TEMP staging table a chunk at a time.

    The caller appends to ``numbers`` (E.164 text), ``statuses`` (a byte per
    row: 1 registered, 0 not; status tables only) and ``dates`` (10 characters
    per row, ``NO_DATE`` for none; only with ``dates=True``), and calls
    :meth:`flush` with the line of the row it is about to append whenever that
    line does not follow the previous one: a chunk holds consecutive lines, so
    a row's line is the chunk's first line plus its index. Each chunk is one
    statement: the numbers as a JSON array, statuses and dates as BLOBs read
    by position (byte offsets: O(1), unlike character offsets in text).
    """

    def __init__(self, conn, table: str, status: bool, dates: bool = False):
        try:
            conn.execute("SELECT json_valid('[]')")
        except sqlite3.OperationalError:
            raise ImportFailed(f"this Python's SQLite {sqlite3.sqlite_version} has no JSON functions "
                               "(built in from SQLite 3.38): imports need them") from None
        self.conn, self.status, self.with_dates = conn, status, dates
        self.numbers: list[str] = []
        self.statuses = bytearray()
        self.dates: list[str] = []
        self.first = 0
        if status:
            _stage(conn, table, "number TEXT, registered INTEGER, registration_date TEXT, line INTEGER")
            self.sql = (f"INSERT INTO temp.{table} (number, registered, registration_date, line)"
                        " SELECT value, substr(?2, key + 1, 1) = x'01',"
                        " nullif(CAST(substr(?3, 10 * key + 1, 10) AS TEXT), ?4), ?5 + key FROM json_each(?1)")
        else:
            _stage(conn, table, "number TEXT, line INTEGER")
            self.sql = f"INSERT INTO temp.{table} (number, line) SELECT value, ?2 + key FROM json_each(?1)"

    def flush(self, next_line: int = 0) -> None:
        """Write the chunk; the next one starts at ``next_line``."""
        nums = self.numbers
        if nums:
            payload = _json_strings(nums)
            if self.status:
                if len(self.statuses) != len(nums) or (self.with_dates and len(self.dates) != len(nums)):
                    raise AssertionError("staging chunk columns of different lengths")
                dates = "".join(self.dates).encode("ascii") if self.with_dates else None
                self.conn.execute(self.sql, (payload, bytes(self.statuses), dates, NO_DATE, self.first))
            else:
                self.conn.execute(self.sql, (payload, self.first))
            nums.clear()
            self.statuses.clear()
            self.dates.clear()
        self.first = next_line


def _fill_status(conn, batch_id, path, src, enc, quoted, norm, skip_invalid, skipped, stats, progress):
    cols = {"number": src.number_column, "status": src.status_column,
            "registration_date": src.registration_date_column}
    words = src.words()
    with Table(path, src, enc, cols, ("number", "status"), quoted=quoted) as t:
        ni, si, ri = t.index["number"], t.index["status"], t.index["registration_date"]
        stager = _Stager(conn, "stage", status=True, dates=ri is not None)
        add_number, add_status, add_date = stager.numbers.append, stager.statuses.append, stager.dates.append
        flush, chunk = stager.flush, STAGE_CHUNK

        def bad(err):
            if not skip_invalid:
                raise ImportFailed(err)
            skipped.append(err)

        n_rows = n_reg = 0
        expect = -1  # the line that continues the current chunk
        for line, row in t.rows():
            try:
                number = norm(row[ni])
                cell = row[si]
            except IndexError:
                if not any(c.strip() for c in row):
                    continue
                bad(f"{path}:{line}: field '{'number' if ni >= len(row) else 'status'}': missing "
                    f"(the row has {len(row)} field(s))")
                continue
            except InvalidNumber as exc:
                if not any(c.strip() for c in row):
                    continue
                bad(f"{path}:{line}: field 'number': {exc}")
                continue
            st = words.get(cell)
            if st is None:
                st = words.get(" ".join(cell.lower().split()))
                if st is None:
                    bad(f"{path}:{line}: field 'status': unknown status word {cell.strip()!r}")
                    continue
            if ri is not None:
                reg = NO_DATE
                if ri < len(row) and row[ri].strip():
                    try:
                        reg = date.fromisoformat(row[ri].strip()[:10]).isoformat()
                    except ValueError:
                        bad(f"{path}:{line}: field 'registration_date': {row[ri].strip()!r} is not a date YYYY-MM-DD")
                        continue
            if line != expect:  # a gap (blank or skipped line, a header): a new chunk
                flush(line)
            expect = line + 1
            add_number(number)
            add_status(st)
            if ri is not None:
                add_date(reg)
            n_rows += 1
            n_reg += st
            if not n_rows % chunk:
                flush(expect)
                progress(t.tell())
        flush()
        progress(t.tell())
    if n_rows == 0:
        raise ImportFailed(f"{path}: the file holds no result rows" +
                           (f" ({len(skipped)} invalid row(s) skipped)" if skipped else ""))
    try:
        inserted = conn.execute(_STAGE_TO_REGISTER, (batch_id,)).rowcount
    except sqlite3.IntegrityError:
        raise ImportFailed(_conflict_message(conn, path)) from None
    stats["rows"] = inserted
    if inserted == n_rows:
        stats["registered"] = n_reg
    else:  # same-status duplicates were folded: count exactly
        stats["registered"] = conn.execute(
            "SELECT COUNT(DISTINCT number) FROM temp.stage WHERE registered = 1").fetchone()[0]
    conn.execute("DROP TABLE temp.stage")


def _conflict_message(conn, path) -> str:
    """The first number given two statuses (failure path only)."""
    row = conn.execute(
        "SELECT number, MIN(line) FROM temp.stage GROUP BY number HAVING MIN(registered) != MAX(registered)"
        " ORDER BY 2 LIMIT 1").fetchone()
    number, first = row
    first_status = conn.execute("SELECT registered FROM temp.stage WHERE number = ? AND line = ?",
                                (number, first)).fetchone()[0]
    again = conn.execute("SELECT MIN(line) FROM temp.stage WHERE number = ? AND registered != ?",
                         (number, first_status)).fetchone()[0]
    return (f"{path}:{again}: field 'number': {number} appears again with a conflicting status "
            f"(first on line {first})")


def _fill_partial(conn, batch_id, shape, path, src, enc, quoted, sent_info, norm, skip_invalid, skipped, stats,
                  progress):
    """registered / cleared: every sent number gets the default status, the listed ones the other."""
    listed = 1 if shape == "registered" else 0
    default = 1 - listed
    sent_path, sent_enc, sent_size, sent_quoted = sent_info
    cols = {"number": src.number_column}

    def stage(file, file_enc, file_quoted, table, base):
        n = 0
        with Table(file, src, file_enc, cols, ("number",), quoted=file_quoted) as t:
            ni = t.index["number"]
            stager = _Stager(conn, table, status=False)
            add_number, flush, chunk = stager.numbers.append, stager.flush, STAGE_CHUNK
            expect = -1
            for line, row in t.rows():
                try:
                    number = norm(row[ni])
                except (IndexError, InvalidNumber) as exc:
                    if not any(c.strip() for c in row):
                        continue
                    detail = exc if isinstance(exc, InvalidNumber) else f"missing (the row has {len(row)} field(s))"
                    err = f"{file}:{line}: field 'number': {detail}"
                    if not skip_invalid:
                        raise ImportFailed(err) from None
                    skipped.append(err)
                    continue
                if line != expect:
                    flush(line)
                expect = line + 1
                add_number(number)
                n += 1
                if not n % chunk:
                    flush(expect)
                    progress(base + t.tell())
            flush()
        return n

    if stage(sent_path, sent_enc, sent_quoted, "sent", 0) == 0:
        raise ImportFailed(f"{sent_path}: the sent list holds no numbers")
    listed_rows = stage(path, enc, quoted, "listed", sent_size)
    progress(sent_size + os.path.getsize(path))
    sent_rows = conn.execute(
        "INSERT INTO consultations (number, batch_id, registered) SELECT number, ?, ? FROM temp.sent WHERE true"
        " ORDER BY number ON CONFLICT (number, batch_id) DO NOTHING", (batch_id, default)).rowcount
    conn.execute("CREATE INDEX temp.listed_number ON listed (number)")
    changed = conn.execute(
        "UPDATE consultations SET registered = ? WHERE batch_id = ? AND number IN (SELECT number FROM temp.listed)",
        (listed, batch_id)).rowcount
    distinct_listed = conn.execute("SELECT COUNT(DISTINCT number) FROM temp.listed").fetchone()[0]
    if changed != distinct_listed:  # a listed number missing from the sent list
        row = conn.execute(
            "SELECT l.line, l.number FROM temp.listed l WHERE NOT EXISTS (SELECT 1 FROM consultations c"
            " WHERE c.number = l.number AND c.batch_id = ?) ORDER BY l.line LIMIT 1", (batch_id,)).fetchone()
        raise ImportFailed(f"{path}:{row[0]}: field 'number': {row[1]} is not in the sent list {sent_path}")
    if listed_rows == 0 and not skipped:
        pass  # nothing registered (or nothing cleared): a legitimate, if rare, result
    stats["rows"] = sent_rows
    stats["registered"] = changed if listed else sent_rows - changed
    conn.execute("DROP TABLE temp.sent")
    conn.execute("DROP TABLE temp.listed")


# --------------------------------------------------------------------------- consents and DNC

_CONSENT_SQL = (
    "INSERT INTO consents (number, brand, kind, given_at, given_on, ends_at, ends_on, channel, evidence,"
    " source_file, source_line, batch_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (number, brand, kind, given_at) DO UPDATE SET ends_at = excluded.ends_at,"
    " ends_on = excluded.ends_on, channel = excluded.channel, evidence = excluded.evidence,"
    " source_file = excluded.source_file, source_line = excluded.source_line, batch_id = excluded.batch_id"
    " WHERE ends_at IS NOT excluded.ends_at OR channel IS NOT excluded.channel"
    " OR evidence IS NOT excluded.evidence")


def _import_records(cfg, path: Path, who: str | None, source: str | None, kind: str, shape: str,
                    make_fill: Callable, describe: Callable[[dict], str]) -> ImportResult:
    """The frame of a consent-log or do-not-contact import: hash and check the file,
    run ``make_fill(path, src, enc, size, who, stats)``'s ``fill(conn, batch_id)`` in
    one write transaction, record a failure, answer a duplicate (same sha256)."""
    path = Path(path)
    who = who or getpass.getuser()
    digest = None
    try:
        src = source_for(cfg, source)
        digest, detected, size, _quoted = scan(path)
        if size == 0:
            raise ImportFailed(f"{path}: the file is empty")
        enc = detected if src.encoding == "auto" else src.encoding
        b = _Batch(kind, path, digest, shape, enc, who)
        batch_id, dup = _transaction(cfg, b, make_fill(path, src, enc, size, who, b.stats))
    except ImportFailed as exc:
        _record_failure(cfg, kind, path, digest, shape, str(exc), who=who)
        raise
    if dup:
        return ImportResult(batch_id, 0, True, f"{path}: already imported as batch {batch_id} (same sha256); "
                                               "nothing to do")
    return ImportResult(batch_id, b.stats["rows"], False, f"{path}: batch {batch_id}: {describe(b.stats)}")


def import_consents(cfg, path: Path, who: str | None = None, db=None, *, source: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Upsert the consent log (CSV or JSON Lines): number, brand, kind, given_at, ends_at, channel, evidence.

    A record is keyed by (number, brand, kind, given_at); a known record whose
    ends_at, channel or evidence changed is updated (provenance: the new file
    and line); an identical one is left alone, so a re-import changes nothing.
    """
    today = _now(cfg.timezone).date()
    norm = _normalizer(cfg)
    columns = ("number", "brand", "kind", "given_at", "ends_at", "channel", "evidence")

    def make_fill(path, src, enc, size, who, stats):
        seen = [0]

        def params(batch_id):
            for line, number, r in numbered_records(path, enc, src, columns, ("number", "brand", "kind", "given_at"),
                                                     norm):
                kind = r["kind"].lower()
                if kind not in CONSENT_KINDS:
                    raise ImportFailed(f"{path}:{line}: field 'kind': {kind!r} is not one of "
                                       f"{', '.join(sorted(CONSENT_KINDS))}")
                brand = r["brand"]
                if not brand and kind != KIND_OPTOUT:
                    raise ImportFailed(f"{path}:{line}: field 'brand': a {kind} is given to a brand; "
                                       "only an optout may leave it empty (every brand)")
                given_at, given_on = parse_when(path, line, "given_at", r["given_at"], cfg.timezone)
                if given_on > today:
                    raise ImportFailed(f"{path}:{line}: field 'given_at': {given_at} is in the future")
                ends_at, ends_on = r["ends_at"], None
                if ends_at:
                    ends_on = parse_when(path, line, "ends_at", ends_at, cfg.timezone)[1]
                    if ends_on < given_on:
                        raise ImportFailed(f"{path}:{line}: field 'ends_at': {ends_at} is before given_at {given_at}")
                seen[0] += 1
                yield (number, brand, kind, given_at, given_on.isoformat(), ends_at or None,
                       ends_on.isoformat() if ends_on else None, r["channel"], r["evidence"], str(path), line,
                       batch_id)

        def fill(conn, batch_id):
            before_rows = conn.execute("SELECT COUNT(*) FROM consents").fetchone()[0]
            cur = conn.executemany(_CONSENT_SQL, params(batch_id))
            new = conn.execute("SELECT COUNT(*) FROM consents").fetchone()[0] - before_rows
            changed = max(cur.rowcount, 0)
            if seen[0] == 0:
                raise ImportFailed(f"{path}: the file holds no consent rows")
            stats.update(rows=changed, new=new, updated=changed - new)
            if progress:
                progress(size, size)
        return fill

    return _import_records(cfg, path, who, source, "consents", "consent-log", make_fill,
                           lambda s: f"{s['new']} new consent-log records, {s['updated']} updated "
                                     "(the others already known)")


def import_dnc(cfg, path: Path, who: str | None = None, *, source: str | None = None) -> ImportResult:
    """Apply a do-not-contact file (CSV or JSON Lines): number, brand, reason, action (add|remove).

    ``add`` (the default) creates an active entry unless one exists; ``remove``
    ends the active entry (kept in its history). Provenance: file and line.
    """
    norm = _normalizer(cfg)
    now = _now(cfg.timezone).isoformat(timespec="seconds")

    def make_fill(path, src, enc, size, who, stats):
        def fill(conn, batch_id):
            added = removed = n = 0
            for line, number, r in numbered_records(path, enc, src, ("number", "brand", "reason", "action"),
                                                     ("number",), norm):
                n += 1
                action = (r["action"] or "add").lower()
                if action == "add":
                    cur = conn.execute(
                        "INSERT INTO dnc (number, brand, reason, added_by, added_at, source_file, source_line,"
                        " batch_id) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (number, brand) WHERE removed_at IS NULL"
                        " DO NOTHING", (number, r["brand"], r["reason"], who, now, str(path), line, batch_id))
                    added += cur.rowcount
                elif action == "remove":
                    cur = conn.execute("UPDATE dnc SET removed_by = ?, removed_at = ? WHERE number = ? AND brand = ?"
                                       " AND removed_at IS NULL", (who, now, number, r["brand"]))
                    removed += cur.rowcount
                else:
                    raise ImportFailed(f"{path}:{line}: field 'action': {action!r} is not add or remove")
            if n == 0:
                raise ImportFailed(f"{path}: the file holds no do-not-contact rows")
            stats.update(rows=added + removed, added=added, removed=removed)
        return fill

    return _import_records(cfg, path, who, source, "dnc", "dnc-list", make_fill,
                           lambda s: f"{s['added']} do-not-contact entries added, {s['removed']} removed")


# --------------------------------------------------------------------------- one file, as CLI and watcher see it

def import_file(cfg, path: Path, *, kind: str | None = None, consulted_on: date | None = None,
                brand: str | None = None, shape: str | None = None, sent: Path | None = None,
                source: str | None = None, who: str | None = None, skip_invalid: bool = False,
                progress=None) -> ImportResult:
    """Import ``path`` with its manifest (``<file>.manifest.json``) merged with the explicit options.

    An explicit option that contradicts the manifest is an error, not a choice.
    """
    path = Path(path)
    man = read_manifest(path) or {}
    where = man.get("_path", "")

    def pick(name, given, default=None):
        in_man = man.get(name)
        if given is not None and in_man is not None and given != in_man:
            raise ImportFailed(f"{path}: {name} {given} given, but the manifest {where} says {in_man}")
        return given if given is not None else (in_man if in_man is not None else default)

    try:
        kind = pick("kind", kind, "consultation")
        source = pick("source", source)
        if kind == "consents":
            return import_consents(cfg, path, who=who, source=source, progress=progress)
        if kind == "dnc":
            return import_dnc(cfg, path, who=who, source=source)
        consulted_on = pick("date", consulted_on)
        brand = pick("brand", brand, "")
        shape = pick("shape", shape, "status")
        sent = pick("sent", Path(sent).resolve() if sent else None)
    except ImportFailed as exc:
        _record_failure(cfg, kind or "consultation", path, None, shape or "", str(exc), who=who)
        raise
    return import_consultation(cfg, path, consulted_on, brand, who=who, shape=shape, sent=sent, source=source,
                               skip_invalid=skip_invalid, progress=progress)


def _free_name(folder: Path, name: str, tz: str = "Europe/Rome") -> Path:
    target = folder / name
    if not target.exists() and not Path(str(target) + ".reason.txt").exists():
        return target
    stamp = _now(tz).strftime("%Y%m%dT%H%M%S")
    for i in itertools.count():
        target = folder / (f"{stamp}-{name}" if i == 0 else f"{stamp}-{i}-{name}")
        if not target.exists():
            return target


def move_done(path: Path, folder: Path, tz: str = "Europe/Rome") -> Path:
    """Move an imported file (and its manifest) into ``folder`` under a free name
    (clashes get a time stamp in ``tz``, the rules' timezone)."""
    path = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder, path.name, tz)
    shutil.move(str(path), target)
    man = manifest_path(path)
    if man.exists():
        shutil.move(str(man), manifest_path(target))
    return target


def quarantine(path: Path, reason: str, folder: Path, tz: str = "Europe/Rome") -> Path:
    """Move a rejected file (and its manifest) into ``folder`` with ``<name>.reason.txt`` beside it;
    times in ``tz`` (the rules' timezone), as everywhere else."""
    target = move_done(path, folder, tz)
    Path(str(target) + ".reason.txt").write_text(
        f"{reason}\n\nfile: {path}\nquarantined: {_now(tz).isoformat(timespec='seconds')}\n",
        encoding="utf-8")
    return target
