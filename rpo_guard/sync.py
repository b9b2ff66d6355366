"""Imports into the register database: consultation results, consent log, DNC.

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
status words) is a :class:`Source`, from ``[source NAME]`` config sections.
Number cells are read as text (no type detection), so the leading 0 of
``0612345678`` survives; they are normalized with
:func:`rpo_guard.fastnum.bulk_normalizer`, which gives the answers of
:func:`rpo_guard.numbers.normalize`.
"""
from __future__ import annotations

import codecs
import csv
import getpass
import hashlib
import io
import itertools
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Callable, NamedTuple
from zoneinfo import ZoneInfo

from .decision import CONSENT_KINDS, KIND_OPTOUT
from .numbers import InvalidNumber, normalize

SHAPES = ("status", "registered", "cleared")
KINDS = ("consultation", "consents", "dnc")
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_KEYS = {"kind", "date", "brand", "shape", "sent", "source"}
IMPORT_CACHE_KIB = 64 * 1024          # page cache of the importing connection


class ImportFailed(Exception):
    """A file that cannot be imported; the message names file, line and field."""


@dataclass(frozen=True)
class ImportResult:
    batch_id: int | None
    rows: int
    skipped_duplicate_file: bool
    message: str
    registered: int = 0
    skipped_rows: tuple[str, ...] = ()


# --------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    """How one sender's files are read. Defaults: config.SOURCE_SETTINGS."""
    name: str = "default"
    encoding: str = "auto"
    delimiter: str = "auto"
    header: str = "auto"
    number_column: tuple[str, ...] = ()
    status_column: tuple[str, ...] = ()
    registration_date_column: tuple[str, ...] = ()
    registered_words: tuple[str, ...] = ()
    not_registered_words: tuple[str, ...] = ()

    def words(self) -> dict[str, int]:
        out = {w: 0 for w in self.not_registered_words}
        for w in self.registered_words:
            if w in out:
                raise ImportFailed(f"source {self.name!r}: status word {w!r} is both registered and not registered")
            out[w] = 1
        return out


def source_for(cfg, name: str | None = None, **overrides) -> Source:
    from .config import SOURCE_SETTINGS

    name = name or "default"
    sources = getattr(cfg, "sources", {}) or {}
    if name != "default" and name not in sources:
        raise ImportFailed(f"unknown source {name!r} (configured: {', '.join(sorted(sources)) or 'none'})")
    values = {k: parse(default) for k, (parse, default, _doc) in SOURCE_SETTINGS.items()}
    values.update(sources.get("default", {}))
    if name != "default":
        values.update(sources[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Source(name=name, **values)


# --------------------------------------------------------------------------- reading files

def sha256_of(path: Path) -> str:
    return scan(Path(path)).digest


class Scan(NamedTuple):
    digest: str
    encoding: str   # detected: utf-8-sig or latin-1
    size: int
    quoted: bool    # holds a '"': read with the csv module, else split lines (same cells, faster)


def scan(path: Path) -> Scan:
    """One pass over the bytes: sha256, detected encoding, size, quotes.

    The encoding is ``utf-8-sig`` when the whole file is UTF-8 (with or
    without BOM), else ``latin-1`` (every byte sequence is Latin-1).
    """
    h = hashlib.sha256()
    dec = codecs.getincrementaldecoder("utf-8")()
    utf8, size, quoted = True, 0, False
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
                quoted = quoted or b'"' in chunk
                if utf8:
                    try:
                        dec.decode(chunk)
                    except UnicodeDecodeError:
                        utf8 = False
            if utf8:
                try:
                    dec.decode(b"", final=True)
                except UnicodeDecodeError:
                    utf8 = False
    except FileNotFoundError:
        raise ImportFailed(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImportFailed(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise ImportFailed(f"{path}: cannot read: {exc}") from None
    return Scan(h.hexdigest(), "utf-8-sig" if utf8 else "latin-1", size, quoted)


def _codec(name: str) -> str:
    return "utf-8-sig" if codecs.lookup(name).name == "utf-8" else name  # a BOM is never data


class Table:
    """A delimited text file read as a stream of (line, cells)."""

    def __init__(self, path: Path, src: Source, encoding: str, columns: dict[str, tuple[str, ...]],
                 required: tuple[str, ...], header: str | None = None, quoted: bool = True):
        self.path = path
        self.plain = not quoted
        self.binary = open(path, "rb")
        self.text = io.TextIOWrapper(self.binary, encoding=_codec(encoding), newline="")
        first = ""
        self.skipped_blank = 0
        try:
            while not first.strip():
                first = self.text.readline()
                if not first:
                    break
                if not first.strip():
                    self.skipped_blank += 1
        except UnicodeDecodeError as exc:
            self.close()
            raise ImportFailed(f"{path}:1: not {encoding} text ({exc.reason} at byte {exc.start})") from None
        if not first.strip():
            self.close()
            raise ImportFailed(f"{path}: the file is empty")
        delim = src.delimiter
        if delim == "auto":
            counts = {d: first.count(d) for d in (",", ";", "\t", "|")}
            delim = max(counts, key=counts.get) if any(counts.values()) else ","
        self.delimiter = delim
        self.reader = csv.reader(itertools.chain([first], self.text), delimiter=delim)
        try:
            head = first.rstrip("\r\n").split(delim) if self.plain else next(self.reader)
        except csv.Error as exc:
            self.close()
            raise ImportFailed(f"{path}:{1 + self.skipped_blank}: {exc}") from None
        self.line_offset = self.skipped_blank
        names = [h.strip().lower() for h in head]
        header = header or src.header
        if header == "auto":
            ncell = None
            for cand in columns.get("number", ()):
                if cand.isdigit() and int(cand) - 1 < len(names):
                    ncell = head[int(cand) - 1]
                    break
            has_header = any(n in names for alts in columns.values() for n in alts) or (
                ncell is not None and not _looks_like_number(ncell)) or (
                ncell is None and not _looks_like_number(head[0] if head else ""))
        else:
            has_header = header == "yes"
        self.has_header = has_header
        self.index: dict[str, int | None] = {}
        for col, alts in columns.items():
            idx = None
            for cand in alts:
                if cand.isdigit():
                    idx = int(cand) - 1
                    break
                if has_header and cand in names:
                    idx = names.index(cand)
                    break
            if idx is None and not has_header:
                # no header and no position configured: number first, status second
                idx = {"number": 0, "status": 1}.get(col)
            if idx is None and col in required:
                self.close()
                found = ", ".join(head) if has_header else "no header"
                raise ImportFailed(f"{path}:{1 + self.line_offset}: missing column {col!r} "
                                   f"(looked for {', '.join(alts)}; found: {found})")
            self.index[col] = idx
        self.pending_first = None if has_header else head

    def rows(self):
        """(line, cells), blank lines skipped, decode and CSV errors reported by line."""
        r = self.reader
        off = self.line_offset
        if self.pending_first is not None:
            yield 1 + off, self.pending_first
        if self.plain:  # no quote in the whole file: a line is its cells
            d, n = self.delimiter, 1 + off
            try:
                for n, text in enumerate(self.text, 2 + off):
                    text = text.rstrip("\r\n")
                    if text:
                        yield n, text.split(d)
            except UnicodeDecodeError as exc:
                raise ImportFailed(f"{self.path}:{n + 1}: not {self.text.encoding} text ({exc.reason})") from None
            return
        try:
            for row in r:
                if row:
                    yield r.line_num + off, row
        except UnicodeDecodeError as exc:
            raise ImportFailed(f"{self.path}:{r.line_num + off + 1}: not {self.text.encoding} text "
                               f"({exc.reason})") from None
        except csv.Error as exc:
            raise ImportFailed(f"{self.path}:{r.line_num + off}: {exc}") from None

    def tell(self) -> int:
        try:
            return self.binary.tell()
        except (OSError, ValueError):
            return 0

    def close(self):
        self.text.close() if not self.text.closed else None
        self.binary.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _looks_like_number(cell: str) -> bool:
    from .numbers import clean
    return clean(cell.strip()) is not None


def _cell(row, i):
    if i is None or i >= len(row):
        return ""
    return row[i].strip()


# --------------------------------------------------------------------------- manifest

def manifest_path(path: Path) -> Path:
    return Path(str(path) + MANIFEST_SUFFIX)


def read_manifest(path: Path) -> dict | None:
    """The manifest beside ``path`` (``<file>.manifest.json``), or None when there is none."""
    m = manifest_path(path)
    try:
        text = m.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ImportFailed(f"{m}: cannot read the manifest: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFailed(f"{m}:{exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ImportFailed(f"{m}: a manifest is one JSON object")
    unknown = set(data) - MANIFEST_KEYS
    if unknown:
        raise ImportFailed(f"{m}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(MANIFEST_KEYS))})")
    for k, v in data.items():
        if not isinstance(v, str):
            raise ImportFailed(f"{m}: field {k!r} must be a string")
    if "date" in data:
        try:
            data["date"] = date.fromisoformat(data["date"])
        except ValueError:
            raise ImportFailed(f"{m}: field 'date': {data['date']!r} is not a date YYYY-MM-DD") from None
    if data.get("kind", "consultation") not in KINDS:
        raise ImportFailed(f"{m}: field 'kind': {data['kind']!r} is not one of {', '.join(KINDS)}")
    if data.get("shape", "status") not in SHAPES:
        raise ImportFailed(f"{m}: field 'shape': {data['shape']!r} is not one of {', '.join(SHAPES)}")
    if "sent" in data:
        data["sent"] = (m.parent / data["sent"]).resolve()
    data["_path"] = m
    return data


# --------------------------------------------------------------------------- helpers

def _now(tz: str) -> datetime:
    return datetime.now(ZoneInfo(tz))


def _day_in_zone(text: str, tz: str) -> date:
    """A calendar date in the rules' zone from an ISO date or date-time."""
    if len(text) == 10:
        return date.fromisoformat(text)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is not None:
        dt = dt.astimezone(ZoneInfo(tz))
    return dt.date()


def _parse_when(path, line, fld, text, tz) -> tuple[str, date]:
    try:
        return text, _day_in_zone(text, tz)
    except (ValueError, TypeError):
        raise ImportFailed(f"{path}:{line}: field '{fld}': {text!r} is not an ISO 8601 date or date-time") from None


def _normalizer(cfg) -> Callable[[str], str]:
    from .fastnum import bulk_normalizer
    return bulk_normalizer(cfg.strip_prefixes, cfg.default_region)


def status_word(word: str, src: Source | None = None) -> bool | None:
    words = (src or source_for(None)).words()
    w = " ".join(word.strip().lower().split())
    return None if w not in words else bool(words[w])


def _writer(cfg):
    """The importing connection: schema applied, big page cache, patient lock wait."""
    from .schema import open_db

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
    """Run ``fill(conn, batch_id)`` in one write transaction; (batch id, was a duplicate)."""
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
    msg = (f"{path}: batch {batch_id}: {rows} numbers consulted on {consulted_on} ({reg} registered), "
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

def _records(path: Path, enc: str, src: Source, columns: dict, required: tuple[str, ...]):
    """(line, {field: text}) from CSV (with a header) or JSON Lines (.jsonl/.ndjson or a first '{')."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    if path.suffix.lower() in (".jsonl", ".ndjson") or head.startswith(b"{"):
        with open(path, encoding=_codec(enc), newline="") as fh:
            n = 0
            for line, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ImportFailed(f"{path}:{line}: not a JSON object: {exc.msg}") from None
                if not isinstance(obj, dict):
                    raise ImportFailed(f"{path}:{line}: not a JSON object")
                rec = {}
                for k in columns:
                    v = obj.get(k)
                    rec[k] = "" if v is None else str(v).strip()
                missing = [k for k in required if k not in obj]
                if missing:
                    raise ImportFailed(f"{path}:{line}: field {missing[0]!r}: missing")
                n += 1
                yield line, rec
        return
    with Table(path, src, enc, {k: (k,) for k in columns}, required, header="yes") as t:
        for line, row in t.rows():
            if not any(c.strip() for c in row):
                continue
            yield line, {k: _cell(row, t.index[k]) for k in columns}



def _numbered_records(path: Path, enc: str, src: Source, columns: tuple[str, ...], required: tuple[str, ...],
                      norm: Callable[[str], str]):
    """(line, E.164 number, {field: text}) of a consent-log or do-not-contact file
    (:func:`_records`); a number that is not one stops the import at its line."""
    for line, r in _records(path, enc, src, {c: () for c in columns}, required):
        try:
            number = norm(r["number"])
        except InvalidNumber as exc:
            raise ImportFailed(f"{path}:{line}: field 'number': {exc}") from None
        yield line, number, r

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
            for line, number, r in _numbered_records(path, enc, src, columns, ("number", "brand", "kind", "given_at"),
                                                     norm):
                kind = r["kind"].lower()
                if kind not in CONSENT_KINDS:
                    raise ImportFailed(f"{path}:{line}: field 'kind': {kind!r} is not one of "
                                       f"{', '.join(sorted(CONSENT_KINDS))}")
                brand = r["brand"]
                if not brand and kind != KIND_OPTOUT:
                    raise ImportFailed(f"{path}:{line}: field 'brand': a {kind} is given to a brand; "
                                       "only an optout may leave it empty (every brand)")
                given_at, given_on = _parse_when(path, line, "given_at", r["given_at"], cfg.timezone)
                if given_on > today:
                    raise ImportFailed(f"{path}:{line}: field 'given_at': {given_at} is in the future")
                ends_at, ends_on = r["ends_at"], None
                if ends_at:
                    ends_on = _parse_when(path, line, "ends_at", ends_at, cfg.timezone)[1]
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
            for line, number, r in _numbered_records(path, enc, src, ("number", "brand", "reason", "action"),
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


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    if not target.exists() and not Path(str(target) + ".reason.txt").exists():
        return target
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    for i in itertools.count():
        target = folder / (f"{stamp}-{name}" if i == 0 else f"{stamp}-{i}-{name}")
        if not target.exists():
            return target


def move_done(path: Path, folder: Path) -> Path:
    """Move an imported file (and its manifest) into ``folder`` under a free name."""
    path = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder, path.name)
    shutil.move(str(path), target)
    man = manifest_path(path)
    if man.exists():
        shutil.move(str(man), manifest_path(target))
    return target


def quarantine(path: Path, reason: str, folder: Path) -> Path:
    """Move a rejected file (and its manifest) into ``folder`` with ``<name>.reason.txt`` beside it."""
    target = move_done(path, folder)
    Path(str(target) + ".reason.txt").write_text(
        f"{reason}\n\nfile: {path}\nquarantined: {datetime.now().astimezone().isoformat(timespec='seconds')}\n",
        encoding="utf-8")
    return target


# --------------------------------------------------------------------------- DNC, one number

def dnc_add(cfg, number: str, brand: str = "", reason: str = "", who: str | None = None, db=None) -> str:
    from . import brand_lists

    e164 = normalize(number, cfg.strip_prefixes, cfg.default_region)
    scope = f"brand {brand}" if brand else "every brand"
    if not brand_lists.add(cfg, "dnc", e164, brand, reason, who, db):
        return f"{e164} is already on the do-not-contact list for {scope}"
    return f"{e164} added to the do-not-contact list for {scope}"


def dnc_remove(cfg, number: str, brand: str = "", who: str | None = None, db=None) -> str:
    from . import brand_lists

    e164 = normalize(number, cfg.strip_prefixes, cfg.default_region)
    scope = f"brand {brand}" if brand else "every brand"
    if not brand_lists.remove(cfg, "dnc", e164, brand, who, db):
        raise LookupError(f"{e164} is not on the do-not-contact list for {scope}")
    return f"{e164} removed from the do-not-contact list for {scope} (kept in its history)"


def dnc_list(cfg, number: str | None = None, brand: str | None = None, db=None) -> list[dict]:
    from .schema import open_db

    db = db or open_db(cfg.register_db, cfg.file_mode, cfg.group)
    sql, params = "SELECT number, brand, reason, added_by, added_at FROM dnc WHERE removed_at IS NULL", []
    if number:
        sql += " AND number = ?"
        params.append(normalize(number, cfg.strip_prefixes, cfg.default_region))
    if brand is not None:
        sql += " AND brand = ?"
        params.append(brand)
    cols = ("number", "brand", "reason", "added_by", "added_at")
    return [dict(zip(cols, r)) for r in db.conn.execute(sql + " ORDER BY number, brand", params)]


# --------------------------------------------------------------------------- freshness

def status_report(cfg, today: date | None = None) -> dict:
    """Freshness per brand, for `rpo-guard status` and monitoring.

    ``exit``: 0 fine; 1 an import failed after the last successful one;
    2 some brand (or the shared account) has no valid consultation at all,
    the register's schema is not this rpo_guard's (every call is blocked
    until `rpo-guard migrate`), or the data folder or a database is
    world-writable (anyone on the machine could rewrite the register or
    the audit log). ``permissions`` lists every permission problem
    (rpo_guard.perms.check); only world-writable ones change ``exit``.
    """
    from . import perms
    from .schema import SCHEMA_VERSION
    from urllib.parse import quote

    today = today or _now(cfg.timezone).date()
    path = cfg.register_db
    if not Path(path).is_file():
        raise ImportFailed(f"{path}: register database not found (run `rpo-guard init`)")
    conn = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True, timeout=5)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        schema_problem = "" if version == SCHEMA_VERSION else (
            f"schema version {version}, this rpo_guard needs {SCHEMA_VERSION}: every call is blocked"
            + (" (run `rpo-guard migrate`)" if version < SCHEMA_VERSION else " (upgrade rpo_guard)"))
        warnings = perms.check(cfg.data_dir, [cfg.register_db, cfg.audit_db], cfg.file_mode, cfg.group)
        t, soon = today.isoformat(), (today + timedelta(days=3)).isoformat()
        batches = conn.execute(
            "SELECT id, brand, consulted_on, valid_until FROM batches WHERE kind = 'consultation' AND status = 'ok'"
            " AND consulted_on <= ? AND valid_until >= ?", (t, t)).fetchall()
        brands = {r[0] for r in conn.execute(
            "SELECT brand FROM batches WHERE kind = 'consultation' AND status = 'ok'"
            " UNION SELECT brand FROM consents UNION SELECT brand FROM dnc WHERE removed_at IS NULL")}
        brands.discard("")
        last_ok = conn.execute("SELECT id, kind, source_file, imported_at, rows FROM batches WHERE status = 'ok'"
                               " ORDER BY id DESC LIMIT 1").fetchone()
        failed = conn.execute("SELECT id, kind, source_file, imported_at, error FROM batches WHERE status = 'failed'"
                              " AND id > ? ORDER BY id", (last_ok[0] if last_ok else 0,)).fetchall()
        per_brand = []
        counted: dict = {}  # valid batch ids -> (consulted, registered, expiring): brands without
        for brand in [""] + sorted(brands):  # consultations of their own share the scan of the shared ones
            valid = [r for r in batches if r[1] in ("", brand)] if brand else [r for r in batches if r[1] == ""]
            ids = tuple(r[0] for r in valid)
            consulted = registered = expiring = 0
            if ids in counted:
                consulted, registered, expiring = counted[ids]
            elif ids:
                marks = ",".join("?" * len(ids))
                row = conn.execute(
                    "SELECT COUNT(*), TOTAL(registered), TOTAL(substr(k, 1, 10) < ?) FROM ("
                    " SELECT c.number, MAX(b.valid_until || printf('%012d', b.id)) AS k, c.registered AS registered"
                    " FROM consultations c JOIN batches b ON b.id = c.batch_id"
                    f" WHERE c.batch_id IN ({marks}) GROUP BY c.number)", [soon, *ids]).fetchone()
                consulted, registered, expiring = counted[ids] = row[0], int(row[1]), int(row[2])
            consents = conn.execute("SELECT COUNT(*) FROM consents WHERE brand = ?", (brand,)).fetchone()[0]
            dnc = conn.execute("SELECT COUNT(*) FROM dnc WHERE removed_at IS NULL AND brand = ?", (brand,)).fetchone()[0]
            per_brand.append({
                "brand": brand, "numbers_consulted": consulted, "registered": registered,
                "valid_consultations": len(valid),
                "newest_valid": max((r[2] for r in valid), default=None),
                "oldest_valid": min((r[2] for r in valid), default=None),
                "expiring_within_3_days": expiring,
                "consents": consents, "dnc_active": dnc,
            })
        last_import = None
        if last_ok:
            last_import = dict(zip(("batch", "kind", "file", "at", "rows"), last_ok))
        # a brand of its own with nothing valid, or nothing valid at all: every call would be blocked
        nothing_valid = [b["brand"] or "(shared)" for b in per_brand if b["valid_consultations"] == 0
                         and (b["brand"] or not brands)]
        critical = nothing_valid or schema_problem or perms.world_writable(warnings)
        code = 2 if critical else (1 if failed else 0)
        return {
            "today": t, "database": str(path), "brands": per_brand, "last_import": last_import,
            "failed_since_last_success": [dict(zip(("batch", "kind", "file", "at", "error"), f)) for f in failed],
            "nothing_valid": nothing_valid, "schema_version": version, "schema_problem": schema_problem,
            "permissions": warnings, "exit": code,
        }
    finally:
        conn.close()
