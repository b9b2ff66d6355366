"""A whole lead list decided at once (``rpo-guard export-barred``): the answers of ``check``, in bulk.

A dialer that filters its lead list before dialing wastes no attempts on
numbers the guard would refuse. Deciding a million leads one ``check`` at a
time costs a million lookups; here the list is read in chunks, the distinct
numbers of a chunk go into a temporary table, and ONE statement per chunk
joins them with the register (consultations, consents, do-not-contact
entries, silent calls), all chunks inside one read transaction (one snapshot
of the register, as one call sees). Each number's facts then go to the same
pure :func:`rpo_guard.rules.decision.decide` the call path uses; numbers with
the same records (most of a list: one consultation batch) share one decision.

What is the same for every lead (the time of the call, its holidays, the
caller IDs declared for the brand) is read once through
:meth:`rpo_guard.register.store.Store.lookup`, the per-call reader itself.

Pre-dial semantics (docs/integrations/export-barred.md):

* calling hours are evaluated at ``at`` (default now): a list exported at
  night is all ``outside_calling_hours`` unless ``at`` names the dialing time
  or ``[conduct] calling_hours`` is off;
* the caller-ID rule applies only when a caller ID is given (as ``check``);
* a number that is not a valid one is ``invalid_number``, with its line.

``tests/register/test_export.py`` compares every answer with ``check_call``.
"""
from __future__ import annotations

import csv
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Iterator, NamedTuple
from zoneinfo import ZoneInfo

from rpo_guard.rules.calendar_it import local_time
from rpo_guard.rules.callerid import read as read_caller_id
from rpo_guard.rules.decision import (ALLOW, INVALID_NUMBER, CallFacts, ConsentEvent, Consultation, DncEntry,
                                      SilentCall, Verdict, decide)
from rpo_guard.rules.numbers import MAX_INPUT, InvalidNumber, candidate_e164

from .sources import ImportFailed, Table, scan, source_for

CHUNK = 50_000
COLUMNS = ("line", "number", "e164", "decision", "reason", "detail")

# The records of every number of temp.export_leads, tagged as in store._FACTS. CROSS JOIN keeps
# the chunk's numbers the outer loop (one index seek each); with JOIN the planner scans
# the whole consultations table once per chunk.
_BULK_FACTS = """
SELECT l.n, 'c', b.id, b.consulted_on, c.registered, b.brand, c.registration_date, NULL
  FROM temp.export_leads l CROSS JOIN consultations c ON c.number = l.n JOIN batches b ON b.id = c.batch_id
 WHERE b.brand IN ('', :b)
UNION ALL
SELECT l.n, 'k', k.id, k.kind, k.given_on, k.brand, k.ends_on, k.evidence
  FROM temp.export_leads l CROSS JOIN consents k ON k.number = l.n
 WHERE k.brand = :b OR (k.brand = '' AND k.kind = 'optout')
UNION ALL
SELECT l.n, 'd', d.id, d.brand, d.reason, NULL, NULL, NULL
  FROM temp.export_leads l CROSS JOIN dnc d ON d.number = l.n
 WHERE d.brand IN ('', :b) AND d.removed_at IS NULL
UNION ALL
SELECT l.n, 's', s.id, s.on_day, NULL, NULL, NULL, NULL
  FROM temp.export_leads l CROSS JOIN silent_calls s ON s.number = l.n
 WHERE s.on_day >= :since
"""


class Lead(NamedTuple):
    line: int
    number: str        # as written in the list
    e164: str | None   # None: not a valid number
    verdict: Verdict


def _day(text):
    return date.fromisoformat(text) if text else None


def _facts_of(rows, base: CallFacts, e164: str) -> CallFacts:
    """CallFacts from the tagged rows of one number (as Store.lookup reads them)."""
    consultations, consents, dnc, silent = [], [], [], []
    for tag, a, b, d, e, f, g in rows:
        if tag == "c":
            consultations.append(Consultation(batch_id=a, consulted_on=date.fromisoformat(b), registered=bool(d),
                                              brand=e, registration_date=_day(f)))
        elif tag == "k":
            consents.append(ConsentEvent(id=a, kind=b, given_at=date.fromisoformat(d), brand=e,
                                         ends_at=_day(f), evidence=g or ""))
        elif tag == "d":
            dnc.append(DncEntry(id=a, brand=b, reason=d or ""))
        else:
            silent.append(SilentCall(id=a, on=date.fromisoformat(b)))
    return base._replace(e164=e164, consultations=tuple(consultations), consents=tuple(consents),
                         dnc=tuple(dnc), silent_calls=tuple(silent))


def read_leads(cfg, path: Path, source: str | None = None, column: str | None = None
               ) -> Iterator[tuple[int, str]]:
    """(line, number cell) of a lead list, read as the imports read a consultation file
    (encoding, delimiter and header detected or taken from ``[source NAME]``;
    ``column`` a header name or a 1-based position overrides the number column)."""
    path = Path(path)
    src = source_for(cfg, source, number_column=(column,) if column else None)
    digest, detected, size, quoted = scan(path)
    if size == 0:
        raise ImportFailed(f"{path}: the file is empty")
    enc = detected if src.encoding == "auto" else src.encoding
    with Table(path, src, enc, {"number": src.number_column}, ("number",), quoted=quoted) as t:
        ni = t.index["number"]
        for line, row in t.rows():
            cell = row[ni].strip() if ni < len(row) else ""
            if cell or any(c.strip() for c in row):  # a row of empty cells is a blank line
                yield line, cell


def decide_leads(cfg, store, leads, brand: str = "", at: datetime | None = None,
                 caller_id: str | None = None, chunk: int = CHUNK) -> Iterator[Lead]:
    """Every lead ``(line, number)`` with the verdict ``check`` gives it, in the list's order.

    ``store`` is an open :class:`rpo_guard.register.store.Store` (its read-only
    connection holds the temporary table and the read transaction). Policy as
    ``rpo-guard check``: the caller-ID rule only with ``caller_id``.
    """
    from rpo_guard.rules.fastnum import bulk_normalizer

    at = datetime.now(ZoneInfo(cfg.timezone)) if at is None else local_time(at, cfg.timezone)
    brand = (brand or "").strip()
    policy = cfg.policy if caller_id is not None else cfg.policy._replace(caller_id_check=False)
    today = at.date()
    when = at if policy.calling_hours else None
    # What every lead shares, through the per-call reader (its own short read).
    base, _known = store.lookup("+0", brand, today, when, cfg.local_holidays, cfg.silent_call_days, cfg.timezone)
    if caller_id is not None and policy.caller_id_check:
        base = base._replace(caller_id=read_caller_id(caller_id, None, base.declared_caller_ids))
    invalid = decide(base._replace(e164=None), policy)
    empty = decide(base._replace(e164="+0"), policy)  # a valid number no table holds
    params = {"b": brand, "since": (today - timedelta(days=cfg.silent_call_days)).isoformat()}
    norm = bulk_normalizer(cfg.strip_prefixes, cfg.default_region)
    decided: dict[tuple, Verdict] = {}

    conn = store.conn
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS export_leads (n TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("BEGIN")
    try:
        batch: list[tuple[int, str, str | None, str | None]] = []

        def verdict_of(e164: str, rows: list) -> Verdict:
            key = tuple(sorted(rows)) if len(rows) > 1 else (rows[0],)
            verdict = decided.get(key)
            if verdict is None:
                verdict = decided[key] = decide(_facts_of(key, base, e164), policy)
            return verdict

        def flush():
            conn.execute("DELETE FROM temp.export_leads")
            conn.executemany("INSERT OR IGNORE INTO temp.export_leads (n) VALUES (?)",
                             ((c or e,) for _l, _r, c, e in batch if (c or e) is not None))
            found: dict[str, list] = {}
            for n, *row in conn.execute(_BULK_FACTS, params):
                found.setdefault(n, []).append(tuple(row))
            out = []
            for line, raw, candidate, e164 in batch:
                if candidate is not None:
                    rows = found.get(candidate)
                    if rows is not None:  # the register holds it: validated on the way in (as check_call)
                        out.append(Lead(line, raw, candidate, verdict_of(candidate, rows)))
                        continue
                    e164 = _valid(raw)
                    if e164 is not None and e164 != candidate:
                        rows = _one(e164)
                        if rows:
                            out.append(Lead(line, raw, e164, verdict_of(e164, rows)))
                            continue
                elif e164 is not None:
                    rows = found.get(e164)
                    if rows is not None:
                        out.append(Lead(line, raw, e164, verdict_of(e164, rows)))
                        continue
                out.append(Lead(line, raw, None, invalid) if e164 is None else Lead(line, raw, e164, empty))
            batch.clear()
            return out

        def _valid(raw):
            try:
                return norm(raw)
            except InvalidNumber:
                return None

        def _one(e164):  # a number whose reading differs from its unambiguous form (never seen so far)
            conn.execute("DELETE FROM temp.export_leads")
            conn.execute("INSERT INTO temp.export_leads (n) VALUES (?)", (e164,))
            return [tuple(r) for _n, *r in conn.execute(_BULK_FACTS, params)]

        country = "39" if cfg.default_region == "IT" else None
        strip = cfg.strip_prefixes
        plain = country is not None and not strip
        add = batch.append
        for line, raw in leads:
            # as check_call: the unambiguous forms are looked up as written; the rest read by phonenumbers
            if plain and raw.isdigit() and raw.isascii() and len(raw) <= MAX_INPUT:
                # candidate_e164 of plain digits, without clean()'s work
                candidate = ("+" + raw[2:] if raw.startswith("00") else "+39" + raw) if raw[0] == "0" else (
                    None if raw.startswith("39") else "+39" + raw)
            else:
                candidate = candidate_e164(raw, strip, country) if country else None
            add((line, raw, candidate, None if candidate is not None else _valid(raw)))
            if len(batch) >= chunk:
                yield from flush()
        if batch:
            yield from flush()
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
        conn.execute("DELETE FROM temp.export_leads")


def write_csv(out, leads: Iterator[Lead], callable_only: bool = False) -> dict[str, int]:
    """The refused leads (or, with ``callable_only``, the allowed ones) as CSV rows
    ``line,number,e164,decision,reason,detail``; returns the count per reason of every lead."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    counts: dict[str, int] = {}
    want = ALLOW if callable_only else None
    for lead in leads:
        v = lead.verdict
        counts[v.reason] = counts.get(v.reason, 0) + 1
        if (v.decision == ALLOW) == (want is not None):
            w.writerow((lead.line, lead.number, lead.e164 or "", v.decision, v.reason, v.detail))
    return counts


__all__ = ["Lead", "read_leads", "decide_leads", "write_csv", "COLUMNS", "INVALID_NUMBER"]
