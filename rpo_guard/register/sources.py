"""Readers of the files the importers take: consultation results, consent logs, do-not-contact lists.

A :class:`Source` says how one sender's files are read (encoding, delimiter,
header, column names, status words; ``[source NAME]`` config sections).
:func:`scan` makes one pass over the bytes (sha256, encoding, quotes);
:class:`Table` yields the rows of a delimited file with their line numbers;
:func:`records` reads consent and do-not-contact files (CSV with a header, or
JSON Lines); :func:`read_manifest` reads the manifest the watched inbox takes
beside a file. Every problem raises :class:`ImportFailed` naming file, line
and field. Writing is :mod:`rpo_guard.sync`'s.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Callable, NamedTuple
from zoneinfo import ZoneInfo

from rpo_guard.rules.numbers import InvalidNumber

SHAPES = ("status", "registered", "cleared")
KINDS = ("consultation", "consents", "dnc")
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_KEYS = {"kind", "date", "brand", "shape", "sent", "source"}


class ImportFailed(Exception):
    """A file that cannot be imported; the message names file, line and field."""


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
    from rpo_guard.config import SOURCE_SETTINGS

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


def codec_name(name: str) -> str:
    return "utf-8-sig" if codecs.lookup(name).name == "utf-8" else name  # a BOM is never data


class Table:
    """A delimited text file read as a stream of (line, cells)."""

    def __init__(self, path: Path, src: Source, encoding: str, columns: dict[str, tuple[str, ...]],
                 required: tuple[str, ...], header: str | None = None, quoted: bool = True):
        self.path = path
        self.plain = not quoted
        self.binary = open(path, "rb")
        self.text = io.TextIOWrapper(self.binary, encoding=codec_name(encoding), newline="")
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
                ncell is not None and not looks_like_number(ncell)) or (
                ncell is None and not looks_like_number(head[0] if head else ""))
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


def looks_like_number(cell: str) -> bool:
    from rpo_guard.rules.numbers import clean
    return clean(cell.strip()) is not None


def cell(row, i):
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


def day_in_zone(text: str, tz: str) -> date:
    """A calendar date in the rules' zone from an ISO date or date-time."""
    if len(text) == 10:
        return date.fromisoformat(text)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is not None:
        dt = dt.astimezone(ZoneInfo(tz))
    return dt.date()


def parse_when(path, line, fld, text, tz) -> tuple[str, date]:
    try:
        return text, day_in_zone(text, tz)
    except (ValueError, TypeError):
        raise ImportFailed(f"{path}:{line}: field '{fld}': {text!r} is not an ISO 8601 date or date-time") from None


def status_word(word: str, src: Source | None = None) -> bool | None:
    words = (src or source_for(None)).words()
    w = " ".join(word.strip().lower().split())
    return None if w not in words else bool(words[w])


def records(path: Path, enc: str, src: Source, columns: dict, required: tuple[str, ...]):
    """(line, {field: text}) from CSV (with a header) or JSON Lines (.jsonl/.ndjson or a first '{')."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    if path.suffix.lower() in (".jsonl", ".ndjson") or head.startswith(b"{"):
        with open(path, encoding=codec_name(enc), newline="") as fh:
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
            yield line, {k: cell(row, t.index[k]) for k in columns}



def numbered_records(path: Path, enc: str, src: Source, columns: tuple[str, ...], required: tuple[str, ...],
                      norm: Callable[[str], str]):
    """(line, E.164 number, {field: text}) of a consent-log or do-not-contact file
    (:func:`records`); a number that is not one stops the import at its line."""
    for line, r in records(path, enc, src, {c: () for c in columns}, required):
        try:
            number = norm(r["number"])
        except InvalidNumber as exc:
            raise ImportFailed(f"{path}:{line}: field 'number': {exc}") from None
        yield line, number, r

