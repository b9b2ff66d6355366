"""Imports into the register database: consultation results, consent log, DNC.

Every import is all or nothing: the file is read and checked whole first; a
bad row stops it with an :class:`ImportFailed` naming the file, line and
field, and nothing is written. The rows then land in one transaction of the
WAL database, so a lookup sees the data from before or after the import,
never half of it, and a kill at any point leaves the previous data intact.
The same file (by sha256) imported twice is a no-op.

Number columns are read as text (the csv module does no type detection), so
the leading 0 of ``0612345678`` survives.
"""
from __future__ import annotations

import csv
import getpass
import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from .decision import CONSENT_KINDS, KIND_OPTOUT
from .numbers import InvalidNumber, normalize

REGISTERED_WORDS = {"registered", "iscritto", "1", "si", "sì", "yes", "true", "opposto", "y", "s"}
NOT_REGISTERED_WORDS = {"not_registered", "not registered", "non iscritto", "non_iscritto", "0", "no",
                        "false", "n", "libero"}


class ImportFailed(Exception):
    """A file that cannot be imported; the message names file, line and field."""


@dataclass(frozen=True)
class ImportResult:
    batch_id: int | None
    rows: int
    skipped_duplicate_file: bool
    message: str


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _now(tz: str) -> datetime:
    return datetime.now(ZoneInfo(tz))


def _open_csv(path: Path):
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
        sample = fh.read(1)
        fh.seek(0)
    except FileNotFoundError:
        raise ImportFailed(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ImportFailed(f"{path}: not UTF-8 text ({exc})") from None
    if not sample:
        fh.close()
        raise ImportFailed(f"{path}: the file is empty")
    return fh


def _header(path: Path, reader, required: tuple[str, ...]) -> dict[str, int]:
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFailed(f"{path}: the file is empty") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImportFailed(f"{path}:1: unreadable header ({exc})") from None
    cols = {name.strip().lower(): i for i, name in enumerate(header)}
    missing = [c for c in required if c not in cols]
    if missing:
        raise ImportFailed(f"{path}:1: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
    return cols


def _rows(path: Path, reader):
    """(line number, row) pairs, with decode errors reported by line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise ImportFailed(f"{path}:{reader.line_num + 1}: not UTF-8 text ({exc})") from None
        except csv.Error as exc:
            raise ImportFailed(f"{path}:{reader.line_num}: {exc}") from None
        if not any(cell.strip() for cell in row):
            continue
        yield reader.line_num, row


def _cell(row, cols, name) -> str:
    i = cols.get(name)
    return row[i].strip() if i is not None and i < len(row) else ""


def _number(path, line, raw, cfg) -> str:
    try:
        return normalize(raw, cfg.strip_prefixes, cfg.default_region)
    except InvalidNumber as exc:
        raise ImportFailed(f"{path}:{line}: field 'number': {exc}") from None


def status_word(word: str) -> bool | None:
    w = " ".join(word.strip().lower().split())
    if w in REGISTERED_WORDS:
        return True
    if w in NOT_REGISTERED_WORDS:
        return False
    return None


def _day_in_zone(text: str, tz: str) -> date:
    """A calendar date in the rules' zone from an ISO date or date-time."""
    if len(text) == 10:
        return date.fromisoformat(text)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is not None:
        dt = dt.astimezone(ZoneInfo(tz))
    return dt.date()


def _parse_when(path, line, field, text, tz) -> tuple[str, date]:
    try:
        return text, _day_in_zone(text, tz)
    except ValueError:
        raise ImportFailed(f"{path}:{line}: field '{field}': {text!r} is not an ISO 8601 date or date-time") from None


def _already(db, digest: str, kind: str) -> int | None:
    row = db.conn.execute("SELECT id FROM batches WHERE sha256 = ? AND kind = ?", (digest, kind)).fetchone()
    return row[0] if row else None


def import_consultation(cfg, path: Path, consulted_on: date, brand: str = "",
                        who: str | None = None, db=None) -> ImportResult:
    """Import a consultation result: a ``number`` and a ``status`` column.

    An optional ``registration_date`` column is kept when a result provides it.
    """
    from .schema import open_db

    path = Path(path)
    today = _now(cfg.timezone).date()
    if consulted_on > today:
        raise ImportFailed(f"{path}: consultation date {consulted_on} is in the future")
    valid_until = consulted_on + timedelta(days=cfg.validity_days - 1)
    if valid_until < today:
        raise ImportFailed(f"{path}: consultation date {consulted_on} is older than the validity "
                           f"window ({cfg.validity_days} days): it would cover no call")
    db = db or open_db(cfg.register_db, cfg.file_mode)
    digest = sha256_of(path)
    if (batch := _already(db, digest, "consultation")) is not None:
        return ImportResult(batch, 0, True, f"{path}: already imported as batch {batch} (same sha256); nothing to do")

    seen: dict[str, tuple[bool, int]] = {}
    records = []
    with _open_csv(path) as fh:
        reader = csv.reader(fh)
        cols = _header(path, reader, ("number", "status"))
        for line, row in _rows(path, reader):
            number = _number(path, line, _cell(row, cols, "number"), cfg)
            word = _cell(row, cols, "status")
            registered = status_word(word)
            if registered is None:
                raise ImportFailed(f"{path}:{line}: field 'status': unknown status word {word!r}")
            reg_text = _cell(row, cols, "registration_date")
            reg_date = None
            if reg_text:
                reg_date = _parse_when(path, line, "registration_date", reg_text, cfg.timezone)[1].isoformat()
            if number in seen:
                first_status, first_line = seen[number]
                if first_status != registered:
                    raise ImportFailed(f"{path}:{line}: field 'number': {number} appears again with a "
                                       f"conflicting status (first on line {first_line})")
                continue
            seen[number] = (registered, line)
            records.append((number, int(registered), reg_date))
    if not records:
        raise ImportFailed(f"{path}: the file holds no result rows")

    conn = db.conn
    with conn:  # one transaction: the whole file or nothing
        cur = conn.execute(
            "INSERT INTO batches (kind, source_file, sha256, shape, rows, consulted_on, brand, valid_until,"
            " imported_by, imported_at) VALUES ('consultation', ?, ?, 'status', ?, ?, ?, ?, ?, ?)",
            (str(path), digest, len(records), consulted_on.isoformat(), brand or "", valid_until.isoformat(),
             who or getpass.getuser(), _now(cfg.timezone).isoformat(timespec="seconds")))
        batch_id = cur.lastrowid
        conn.executemany("INSERT INTO consultations (number, batch_id, registered, registration_date)"
                         " VALUES (?, ?, ?, ?)", ((n, batch_id, r, d) for n, r, d in records))
    registered = sum(r for _n, r, _d in records)
    return ImportResult(batch_id, len(records), False,
                        f"{path}: batch {batch_id}: {len(records)} numbers consulted on {consulted_on} "
                        f"({registered} registered), valid until {valid_until}"
                        + (f", brand {brand}" if brand else ", shared by every brand"))


def import_consents(cfg, path: Path, who: str | None = None, db=None) -> ImportResult:
    """Import the consent log: number, brand, kind, given_at, ends_at, channel, evidence."""
    from .schema import open_db

    path = Path(path)
    db = db or open_db(cfg.register_db, cfg.file_mode)
    digest = sha256_of(path)
    if (batch := _already(db, digest, "consents")) is not None:
        return ImportResult(batch, 0, True, f"{path}: already imported as batch {batch} (same sha256); nothing to do")
    today = _now(cfg.timezone).date()
    records = []
    with _open_csv(path) as fh:
        reader = csv.reader(fh)
        cols = _header(path, reader, ("number", "brand", "kind", "given_at"))
        for line, row in _rows(path, reader):
            number = _number(path, line, _cell(row, cols, "number"), cfg)
            kind = _cell(row, cols, "kind").lower()
            if kind not in CONSENT_KINDS:
                raise ImportFailed(f"{path}:{line}: field 'kind': {kind!r} is not one of "
                                   f"{', '.join(sorted(CONSENT_KINDS))}")
            brand = _cell(row, cols, "brand")
            if not brand and kind != KIND_OPTOUT:
                raise ImportFailed(f"{path}:{line}: field 'brand': a {kind} is given to a brand; "
                                   "only an optout may leave it empty (every brand)")
            given_at, given_on = _parse_when(path, line, "given_at", _cell(row, cols, "given_at"), cfg.timezone)
            if given_on > today:
                raise ImportFailed(f"{path}:{line}: field 'given_at': {given_at} is in the future")
            ends_at, ends_on = _cell(row, cols, "ends_at"), None
            if ends_at:
                ends_on = _parse_when(path, line, "ends_at", ends_at, cfg.timezone)[1]
                if ends_on < given_on:
                    raise ImportFailed(f"{path}:{line}: field 'ends_at': {ends_at} is before given_at {given_at}")
            records.append((number, brand, kind, given_at, given_on.isoformat(), ends_at or None,
                            ends_on.isoformat() if ends_on else None, _cell(row, cols, "channel"),
                            _cell(row, cols, "evidence"), str(path), line))
    if not records:
        raise ImportFailed(f"{path}: the file holds no consent rows")

    conn = db.conn
    with conn:
        cur = conn.execute(
            "INSERT INTO batches (kind, source_file, sha256, shape, rows, brand, imported_by, imported_at)"
            " VALUES ('consents', ?, ?, 'consent-log', ?, '', ?, ?)",
            (str(path), digest, len(records), who or getpass.getuser(),
             _now(cfg.timezone).isoformat(timespec="seconds")))
        batch_id = cur.lastrowid
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO consents (number, brand, kind, given_at, given_on, ends_at, ends_on,"
            " channel, evidence, source_file, source_line, batch_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (r + (batch_id,) for r in records))
        added = conn.total_changes - before
        conn.execute("UPDATE batches SET rows = ? WHERE id = ?", (added, batch_id))
    return ImportResult(batch_id, added, False,
                        f"{path}: batch {batch_id}: {added} new consent-log records "
                        f"({len(records) - added} already known)")


def dnc_add(cfg, number: str, brand: str = "", reason: str = "", who: str | None = None, db=None) -> str:
    from .schema import open_db

    e164 = normalize(number, cfg.strip_prefixes, cfg.default_region)
    db = db or open_db(cfg.register_db, cfg.file_mode)
    with db.conn:
        cur = db.conn.execute(
            "INSERT OR IGNORE INTO dnc (number, brand, reason, added_by, added_at) VALUES (?, ?, ?, ?, ?)",
            (e164, brand or "", reason, who or getpass.getuser(), _now(cfg.timezone).isoformat(timespec="seconds")))
    scope = f"brand {brand}" if brand else "every brand"
    if cur.rowcount == 0:
        return f"{e164} is already on the do-not-contact list for {scope}"
    return f"{e164} added to the do-not-contact list for {scope}"


def dnc_remove(cfg, number: str, brand: str = "", who: str | None = None, db=None) -> str:
    from .schema import open_db

    e164 = normalize(number, cfg.strip_prefixes, cfg.default_region)
    db = db or open_db(cfg.register_db, cfg.file_mode)
    with db.conn:
        cur = db.conn.execute(
            "UPDATE dnc SET removed_by = ?, removed_at = ? WHERE number = ? AND brand = ? AND removed_at IS NULL",
            (who or getpass.getuser(), _now(cfg.timezone).isoformat(timespec="seconds"), e164, brand or ""))
    scope = f"brand {brand}" if brand else "every brand"
    if cur.rowcount == 0:
        raise LookupError(f"{e164} is not on the do-not-contact list for {scope}")
    return f"{e164} removed from the do-not-contact list for {scope} (kept in its history)"


def dnc_list(cfg, number: str | None = None, brand: str | None = None, db=None) -> list[dict]:
    from .schema import open_db

    db = db or open_db(cfg.register_db, cfg.file_mode)
    sql, params = "SELECT number, brand, reason, added_by, added_at FROM dnc WHERE removed_at IS NULL", []
    if number:
        sql += " AND number = ?"
        params.append(normalize(number, cfg.strip_prefixes, cfg.default_region))
    if brand is not None:
        sql += " AND brand = ?"
        params.append(brand)
    cols = ("number", "brand", "reason", "added_by", "added_at")
    return [dict(zip(cols, r)) for r in db.conn.execute(sql + " ORDER BY number, brand", params)]
