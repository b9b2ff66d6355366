"""Per-call reader of the register database, on the stdlib driver.

Opened read-only (``mode=ro``): a lookup can never change the data. The
database is in WAL mode, so imports never block a lookup and a lookup never
sees half an import. Any trouble (missing file, unreadable, corrupt, wrong
schema, lock held past the timeout) raises :class:`StoreError` or
``sqlite3.Error``; the caller turns either into ``BLOCK``/``error``.
"""
from __future__ import annotations

import os
import sqlite3
from datetime import date, datetime, timedelta

from .decision import CallFacts, ConsentEvent, Consultation, DncEntry, SilentCall
from .schema import SCHEMA_VERSION


class StoreError(Exception):
    pass


_CONSULTATIONS = """
SELECT b.id, b.consulted_on, c.registered, b.brand, c.registration_date
FROM consultations c JOIN batches b ON b.id = c.batch_id
WHERE c.number = ? AND b.brand IN ('', ?)
"""
_CONSENTS = """
SELECT id, kind, given_on, brand, ends_on, evidence FROM consents
WHERE number = ? AND (brand = ? OR (brand = '' AND kind = 'optout'))
"""
_DNC = "SELECT id, brand, reason FROM dnc WHERE number = ? AND brand IN ('', ?) AND removed_at IS NULL"
_SILENT = "SELECT id, on_day FROM silent_calls WHERE number = ? AND on_day >= ?"
_CALLER_IDS = "SELECT number FROM caller_ids WHERE brand IN ('', ?) AND removed_at IS NULL"
_HOLIDAY_YEARS = "SELECT year FROM holiday_years WHERE year IN (?, ?)"
_HOLIDAYS = "SELECT day, name FROM holidays WHERE day IN (?, ?)"


def _uri_path(path: str) -> str:
    """The path as a file: URI path (only %, ? and # are special there)."""
    return os.path.abspath(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


class Store:
    def __init__(self, path: str, busy_timeout_ms: int = 1000):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise StoreError(f"{path}: register database not found")
        self.path = path
        self.conn = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro", uri=True,
                                    timeout=busy_timeout_ms / 1000, check_same_thread=False,
                                    isolation_level=None)
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            self.conn.close()
            raise StoreError(f"{path}: schema version {version}, expected {SCHEMA_VERSION} "
                             "(run `rpo-guard migrate`)")
        # Facts that are not about the number (declared caller IDs, cached
        # holidays) are kept between calls of a long-running server while
        # PRAGMA data_version says no other connection has committed since.
        self._shared: dict = {}
        self._shared_version = None

    def close(self) -> None:
        self.conn.close()

    def facts(self, e164: str, brand: str, today: date, at: datetime | None = None,
              local_holidays: tuple[str, ...] = (), silent_call_days: int = 366,
              tz: str = "Europe/Rome") -> CallFacts:
        """Every record about the number and the call that the decision may use.

        Read in one transaction, so the tables agree with each other: the
        register, consents, do-not-contact list, silent calls of the last
        ``silent_call_days`` days, the caller IDs declared for the brand, and
        (with ``at``, the call's local time) the cached holidays of that day
        and the next. ``caller_id`` is left for the caller to fill in.
        """
        c = self.conn
        when = None
        c.execute("BEGIN")
        try:
            version = c.execute("PRAGMA data_version").fetchone()[0]
            if version != self._shared_version:
                self._shared.clear()
                self._shared_version = version
            shared = self._shared
            consultations = tuple(
                Consultation(batch_id=r[0], consulted_on=date.fromisoformat(r[1]), registered=bool(r[2]),
                             brand=r[3], registration_date=_day(r[4]))
                for r in c.execute(_CONSULTATIONS, (e164, brand)))
            consents = tuple(
                ConsentEvent(id=r[0], kind=r[1], given_at=date.fromisoformat(r[2]), brand=r[3],
                             ends_at=_day(r[4]), evidence=r[5] or "")
                for r in c.execute(_CONSENTS, (e164, brand)))
            dnc = tuple(DncEntry(id=r[0], brand=r[1], reason=r[2] or "") for r in c.execute(_DNC, (e164, brand)))
            since = (today - timedelta(days=silent_call_days)).isoformat()
            silent = tuple(SilentCall(id=r[0], on=date.fromisoformat(r[1])) for r in c.execute(_SILENT, (e164, since)))
            declared = shared.get(("caller_ids", brand))
            if declared is None:
                declared = shared[("caller_ids", brand)] = tuple(
                    sorted({r[0] for r in c.execute(_CALLER_IDS, (brand,))}))
            if at is not None:
                from .calendar_it import call_time, local_time
                day = local_time(at, tz).date()
                nxt = day + timedelta(days=1)
                cached = shared.get(("holidays", day))
                if cached is None:
                    years = {r[0] for r in c.execute(_HOLIDAY_YEARS, (day.year, nxt.year))}
                    found = dict(c.execute(_HOLIDAYS, (day.isoformat(), nxt.isoformat())).fetchall())
                    cached = shared[("holidays", day)] = {
                        d: found.get(d.isoformat(), "") for d in (day, nxt) if d.year in years}
                when = call_time(at, tz, local_holidays, cached)
        finally:
            c.execute("COMMIT")
        return CallFacts(today=today, e164=e164, brand=brand, consultations=consultations,
                         consents=consents, dnc=dnc, silent_calls=silent, when=when,
                         declared_caller_ids=declared)

    def knows(self, e164: str) -> bool:
        """True when any table holds the number: it was validated on the way in."""
        c = self.conn
        return c.execute(
            "SELECT EXISTS(SELECT 1 FROM consultations WHERE number = ?)"
            " OR EXISTS(SELECT 1 FROM consents WHERE number = ?)"
            " OR EXISTS(SELECT 1 FROM dnc WHERE number = ?)", (e164, e164, e164)).fetchone()[0] == 1
