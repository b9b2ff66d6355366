"""Reading the audit log: filters, listing, streaming export, summary, explanations.

Everything here reads through the ``attempts_explained`` view (documented in
docs/auditor.md), so what the CLI prints, what an export holds and what an
auditor sees in Datasette are the same columns. The same functions read the
fleet's central trail when given its :class:`Source` (``rpo_guard.fleet.audit.CENTRAL``):
the same filters and columns, with the box in front.
"""
from __future__ import annotations

import csv
import json
import sqlite3
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Callable
from urllib.parse import quote
from zoneinfo import ZoneInfo

from rpo_guard.rules.decision import rule_line

# The export columns, in order. Stable: new columns may be appended, none renamed.
EXPORT_COLUMNS = ("id", "at", "at_utc", "day", "uniqueid", "channel", "callerid", "accountcode", "brand",
                  "dialed", "e164", "decision", "reason", "basis_kind", "batch_id", "consulted_on",
                  "consent_id", "consent_given_at", "evidence", "dnc_id", "detail", "latency_ms", "via",
                  "basis", "prev_hash", "hash")


@dataclass(frozen=True)
class Filters:
    since: str | None = None      # ISO 8601 with offset, inclusive
    until: str | None = None      # ISO 8601 with offset, exclusive
    e164: str | None = None
    brand: str | None = None
    decision: str | None = None
    reasons: tuple[str, ...] = ()
    callerid: str | None = None
    uniqueid: str | None = None
    simulated: bool | None = None  # False: leave out `rpo-guard simulate-call`'s rows (via = simulate)
    box: str | None = None        # fleet mode: one box's rows of the central trail

    def where(self, postgres: bool = False) -> tuple[str, list]:
        """The WHERE clause and its parameters, for SQLite (audit.db) or PostgreSQL (the centre).

        Times are compared as moments in both: ``julianday`` in SQLite, ``timestamptz`` in PostgreSQL.
        """
        p = "%s" if postgres else "?"
        instant = (lambda x: f"({x})::timestamptz") if postgres else (lambda x: f"julianday({x})")
        clauses, params = [], []
        if self.simulated is False:
            clauses.append("via != 'simulate'")
        elif self.simulated:
            clauses.append("via = 'simulate'")
        if self.since:
            clauses.append(f"{instant('at')} >= {instant(p)}")
            params.append(self.since)
        if self.until:
            clauses.append(f"{instant('at')} < {instant(p)}")
            params.append(self.until)
        if self.box is not None and not postgres:
            raise ValueError("a box is a filter of the central trail (fleet mode) only")
        for col, value in (("box", self.box), ("e164", self.e164), ("brand", self.brand),
                           ("decision", self.decision), ("callerid", self.callerid), ("uniqueid", self.uniqueid)):
            if value is not None:
                clauses.append(f"{col} = {p}")
                params.append(value)
        if self.reasons:
            clauses.append(f"reason IN ({', '.join([p] * len(self.reasons))})")
            params.extend(self.reasons)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _execute(conn, sql: str, params):
    return conn.execute(sql, params)


@dataclass(frozen=True)
class Source:
    """Where attempts are read: one box's audit.db (:data:`LOCAL`) or the fleet's central trail
    (``rpo_guard.fleet.audit.CENTRAL``). Both offer the columns of ``attempts``; ``explained``
    is the relation with :data:`EXPORT_COLUMNS`, ``keys`` the columns shown before them."""
    attempts: str = "attempts"
    explained: str = "attempts_explained"
    keys: tuple[str, ...] = ()
    order: tuple[str, ...] = ("id",)
    postgres: bool = False
    stream: Callable = _execute   # (conn, sql, params) -> a cursor read with fetchmany

    @property
    def columns(self) -> tuple[str, ...]:
        return self.keys + EXPORT_COLUMNS


LOCAL = Source()


def moment(text: str, tz: str, end: bool = False) -> str:
    """An ISO date or date-time as an ISO date-time with offset.

    A bare date means the start of that day in the rules' timezone, or with
    ``end`` the start of the next day (so ``--until 2026-11-03`` includes
    the 3rd). A date-time without offset is read in the rules' timezone.
    """
    zone = ZoneInfo(tz)
    text = text.strip()
    if len(text) == 10:
        d = date.fromisoformat(text)
        if end:
            d += timedelta(days=1)
        return datetime.combine(d, time(0), zone).isoformat()
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        at = at.replace(tzinfo=zone)
    return at.isoformat()


def select(conn, filters: Filters, limit: int | None = None, newest_first: bool = False, source: Source = LOCAL):
    """The matching rows (``source.columns``), oldest first, or the newest first."""
    where, params = filters.where(source.postgres)
    order = ", ".join(c + (" DESC" if newest_first else "") for c in source.order)
    sql = f"SELECT {', '.join(source.columns)} FROM {source.explained}{where} ORDER BY {order}"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return source.stream(conn, sql, params)


def count(conn, filters: Filters, source: Source = LOCAL) -> int:
    where, params = filters.where(source.postgres)
    return conn.execute(f"SELECT count(*) FROM {source.attempts}{where}", params).fetchone()[0]


def _rows(cur, size: int = 5000):
    while True:
        batch = cur.fetchmany(size)
        if not batch:
            return
        yield from batch


def export(conn, filters: Filters, fmt: str, out, source: Source = LOCAL) -> int:
    """Stream the matching rows to ``out`` (text file) as csv or jsonl; returns the row count.

    Constant memory: rows are fetched and written a few thousand at a time.
    CSV: a header line, NULL as an empty cell. JSONL: one object per line,
    NULL as null, ``basis`` as the JSON text the hash covers.
    """
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown export format {fmt!r}")
    cur = select(conn, filters, source=source)
    cols = source.columns
    n = 0
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(cols)
        for batch in iter(lambda: cur.fetchmany(5000), []):
            w.writerows(batch)
            n += len(batch)
    elif fmt == "jsonl":
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        for batch in iter(lambda: cur.fetchmany(5000), []):
            out.write("".join(dumps(dict(zip(cols, r))) + "\n" for r in batch))
            n += len(batch)
    return n


SELFTEST_VIA = "-selftest"  # the end of `via` on the rows of `rpo-guard selftest`'s test calls


def summary(conn, filters: Filters, source: Source = LOCAL) -> list[dict]:
    """Counts per day, brand, decision and reason (per box first at the centre; the self-test calls left out)."""
    where, params = filters.where(source.postgres)
    # the test calls of `rpo-guard selftest` are not attempts to reach anyone
    where = (where + " AND " if where else " WHERE ") + f"COALESCE(via, '') NOT LIKE {'%s' if source.postgres else '?'}"
    names = (*source.keys, "day", "brand", "decision", "reason")
    groups = ", ".join(str(i) for i in range(1, len(names) + 1))
    cur = conn.execute(
        f"SELECT {''.join(k + ', ' for k in source.keys)}substr(at, 1, 10) AS day, brand, decision, reason, count(*)"
        f" FROM {source.attempts}{where} GROUP BY {groups} ORDER BY {groups}", [*params, f"%{SELFTEST_VIA}"])
    return [dict(zip((*names, "attempts"), r)) for r in cur]


# -- explanations --------------------------------------------------------------



def _register(path: Path | None):
    if path is None or not Path(path).is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM batches LIMIT 1")
        return conn
    except sqlite3.Error:
        return None


def get_row(conn, row_id: int) -> dict | None:
    old = conn.row_factory
    conn.row_factory = sqlite3.Row
    try:
        r = conn.execute(f"SELECT {', '.join(EXPORT_COLUMNS)} FROM attempts_explained WHERE id = ?",
                         (row_id,)).fetchone()
    finally:
        conn.row_factory = old
    return dict(r) if r else None


def explain(conn, row_id: int, register_db: Path | None = None) -> list[str] | None:
    """One attempt in words: what, when, which rule, on which records. None if no such row."""
    from .log import COLUMNS, GENESIS, row_hash

    r = get_row(conn, row_id)
    if r is None:
        return None
    basis = json.loads(r["basis"] or "{}")
    verb = "ALLOWED" if r["decision"] == "ALLOW" else "REFUSED"
    number = r["e164"] or f"{r['dialed']!r} (not a valid number)"
    lines = [
        f"Attempt {r['id']}: {verb} ({r['decision']} {r['reason']})",
        f"  when:     {r['at']}  (UTC {r['at_utc']})",
        f"  call:     dialed {r['dialed']!r} -> {number}; brand {r['brand']!r}; caller ID {r['callerid']!r}",
        f"  asterisk: uniqueid {r['uniqueid']}, channel {r['channel']}, accountcode {r['accountcode'] or '-'}, "
        f"via {r['via']}, decided in {r['latency_ms']} ms",
        f"  rule:     {rule_line(r['reason'])}",
    ]
    if r["detail"]:
        lines.append(f"  detail:   {r['detail']}")
    reg = _register(register_db)
    kind = basis.get("kind")
    if kind == "consultation":
        lines.append(f"  consultation: batch {basis.get('batch_id')}, register consulted on "
                     f"{basis.get('consulted_on')} ({'for brand ' + repr(basis['brand']) if basis.get('brand') else 'shared by every brand'})"
                     + (f"; registered by {basis['registered_by']} at the latest" if basis.get("registered_by") else ""))
        b = reg.execute("SELECT * FROM batches WHERE id = ?", (basis.get("batch_id"),)).fetchone() if reg else None
        if b is not None:
            lines.append(f"                file {b['source_file']} (sha256 {b['sha256']}), {b['rows']} number{'' if b['rows'] == 1 else 's'}, "
                         f"valid until {b['valid_until']}, imported by {b['imported_by']} at {b['imported_at']}")
        elif reg is not None:
            lines.append("                (batch no longer in the register database)")
    elif kind in ("consent", "contract", "optout", "revocation"):
        lines.append(f"  {kind}: record {basis.get('consent_id')}, given {basis.get('given_at')}, "
                     f"evidence {basis.get('evidence') or '(none recorded)'}")
        c = reg.execute("SELECT * FROM consents WHERE id = ?", (basis.get("consent_id"),)).fetchone() if reg else None
        if c is not None:
            lines.append(f"                for brand {c['brand'] or '(every brand)'!r}, channel {c['channel'] or '-'}, "
                         f"given at {c['given_at']}" + (f", ends {c['ends_at']}" if c["ends_at"] else "")
                         + f"; from {c['source_file']} line {c['source_line']}")
        elif reg is not None:
            lines.append("                (record no longer in the register database)")
    elif kind == "dnc":
        lines.append(f"  do-not-contact: entry {basis.get('dnc_id')} "
                     f"({'brand ' + repr(basis['brand']) if basis.get('brand') else 'every brand'})")
        d = reg.execute("SELECT * FROM dnc WHERE id = ?", (basis.get("dnc_id"),)).fetchone() if reg else None
        if d is not None:
            lines.append(f"                added by {d['added_by']} at {d['added_at']}: {d['reason'] or '(no reason)'}"
                         + (f"; removed by {d['removed_by']} at {d['removed_at']}" if d["removed_at"] else ""))
    elif basis:
        lines.append("  basis:    " + ", ".join(f"{k}={v}" for k, v in sorted(basis.items())))
    else:
        lines.append("  basis:    no record decided it (see the rule)")
    if reg is None:
        lines.append("  register: rpo.db not available; the details above come from the audit row alone")
    else:
        reg.close()
    values = [r[c] for c in COLUMNS]
    own = row_hash(r["prev_hash"], r["id"], values) == r["hash"]
    prev = conn.execute("SELECT hash FROM attempts WHERE id = ?", (row_id - 1,)).fetchone()
    cp = conn.execute("SELECT id FROM checkpoints WHERE last_id = ? AND last_hash = ?",
                      (row_id - 1, r["prev_hash"])).fetchone()
    if r["prev_hash"] == GENESIS and row_id == 1:
        link = "first row of the chain"
    elif prev is not None:
        link = f"links to row {row_id - 1}" if prev[0] == r["prev_hash"] else f"DOES NOT link to row {row_id - 1}"
    elif cp is not None:
        link = f"links to checkpoint {cp[0]}: the rows before it were pruned"
    else:
        link = f"row {row_id - 1} is missing"
    lines.append(f"  chain:    hash {r['hash']} ({'matches the content' if own else 'DOES NOT match the content'}; "
                 f"{link}); `rpo-guard audit verify` checks the whole log")
    return lines
