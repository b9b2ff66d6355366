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
import time
from datetime import date, datetime, timedelta

from rpo_guard.rules.calendar_it import local_call_time, local_time
from rpo_guard.rules.decision import CallFacts, ConsentEvent, Consultation, DncEntry, SilentCall
from .schema import SCHEMA_VERSION


class StoreError(Exception):
    pass


# Every record about one number, in ONE statement: a single SELECT reads one
# snapshot (no BEGIN/COMMIT round trips), and one execute instead of six is most
# of the saving on a long-running server. Rows are tagged by their table:
#   c consultation, k consent-log event, d do-not-contact entry, s silent call,
#   v PRAGMA data_version (for the per-connection caches), n whether ANY table
#   holds the number (any brand: it was validated by phonenumbers on the way in).
_FACTS = """
SELECT 'c', b.id, b.consulted_on, c.registered, b.brand, c.registration_date, NULL
  FROM consultations c JOIN batches b ON b.id = c.batch_id
 WHERE c.number = :n AND b.brand IN ('', :b)
UNION ALL
SELECT 'k', id, kind, given_on, brand, ends_on, evidence FROM consents
 WHERE number = :n AND (brand = :b OR (brand = '' AND kind = 'optout'))
UNION ALL
SELECT 'd', id, brand, reason, NULL, NULL, NULL FROM dnc
 WHERE number = :n AND brand IN ('', :b) AND removed_at IS NULL
UNION ALL
SELECT 's', id, on_day, NULL, NULL, NULL, NULL FROM silent_calls WHERE number = :n AND on_day >= :since
UNION ALL
SELECT 'v', data_version, NULL, NULL, NULL, NULL, NULL FROM pragma_data_version
UNION ALL
SELECT 'n', EXISTS(SELECT 1 FROM consultations WHERE number = :n)
         OR EXISTS(SELECT 1 FROM consents WHERE number = :n)
         OR EXISTS(SELECT 1 FROM dnc WHERE number = :n), NULL, NULL, NULL, NULL, NULL
"""
# Fleet mode: the replica's last confirmation by the centre (rpo_guard.fleet.replica), in the same snapshot.
# Read only when PRAGMA data_version has moved since the last read (see Store.lookup): while it
# has not, no other connection has committed, so the confirmation kept is that of the snapshot.
_FACTS_REPLICA = _FACTS + """
UNION ALL
SELECT 'r', confirmed_at, NULL, NULL, NULL, NULL, NULL FROM fleet_replica WHERE id = 1
"""
_CALLER_IDS = "SELECT number FROM caller_ids WHERE brand IN ('', ?) AND removed_at IS NULL"
_HOLIDAY_YEARS = "SELECT year FROM holiday_years WHERE year IN (?, ?)"
_HOLIDAYS = "SELECT day, name FROM holidays WHERE day IN (?, ?)"


def _uri_path(path: str) -> str:
    """The path as a file: URI path (only %, ? and # are special there)."""
    return os.path.abspath(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


class Store:
    def __init__(self, path: str, busy_timeout_ms: int = 1000, clock=time.time):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise StoreError(self._why_missing(path))
        self.path = path
        self.conn = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro", uri=True,
                                    timeout=busy_timeout_ms / 1000, check_same_thread=False,
                                    isolation_level=None)
        try:
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.OperationalError as exc:
            self.conn.close()
            from rpo_guard.perms import access_denied
            raise StoreError(f"{path}: {access_denied(path) or exc}") from None
        if version != SCHEMA_VERSION:
            self.conn.close()
            raise StoreError(f"{path}: schema version {version}, expected {SCHEMA_VERSION} "
                             "(run `rpo-guard migrate`)")
        # A fleet replica (rpo_guard.fleet) also answers when the centre last confirmed it,
        # read with the facts; ``clock`` (seconds since the epoch) gives its age.
        self._clock = clock
        self._replica = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'fleet_replica'").fetchone() is not None
        self._confirmed = self._confirmed_version = None  # the confirmation as read at that data_version
        # Facts that are not about the number (declared caller IDs, cached
        # holidays) are kept between calls of a long-running server while
        # PRAGMA data_version says no other connection has committed since.
        self._shared: dict = {}
        self._shared_version = None

    @staticmethod
    def _why_missing(path: str) -> str:
        """"not found", or the permission problem that makes the file look missing."""
        from rpo_guard.perms import access_denied
        denied = access_denied(path)
        return f"{path}: {denied}" if denied else f"{path}: register database not found"

    def close(self) -> None:
        self.conn.close()

    def facts(self, e164: str, brand: str, today: date, at: datetime | None = None,
              local_holidays: tuple[str, ...] = (), silent_call_days: int = 366,
              tz: str = "Europe/Rome") -> CallFacts:
        """Every record about the number and the call that the decision may use.

        The register, consents, do-not-contact list and silent calls of the
        last ``silent_call_days`` days are read in one statement (one
        snapshot, so the tables agree with each other); the caller IDs
        declared for the brand and (with ``at``, the call's local time) the
        cached holidays of that day and the next come from this connection's
        cache, refilled whenever PRAGMA data_version says another connection
        has committed. ``caller_id`` is left for the caller to fill in.
        """
        if at is not None:
            at = local_time(at, tz)
        return self.lookup(e164, brand, today, at, local_holidays, silent_call_days, tz)[0]

    def lookup(self, e164: str, brand: str, today: date, at: datetime | None = None,
               local_holidays: tuple[str, ...] = (), silent_call_days: int = 366,
               tz: str = "Europe/Rome") -> tuple[CallFacts, bool]:
        """``(facts, known)``: :meth:`facts`, and whether any table holds the number
        (for any brand), read in the same statement. ``at`` is the call's local
        time in ``tz``, as :func:`rpo_guard.rules.calendar_it.local_time` gives it."""
        c = self.conn
        params = {"n": e164, "b": brand, "since": (today - timedelta(days=silent_call_days)).isoformat()}
        # A replica reads its confirmation with the facts only when data_version has moved
        # since it was last read; if it has, the facts are read again with it, so that the
        # two always come from one snapshot (never a newer confirmation with older facts).
        with_confirmation = self._replica and self._confirmed_version is None
        consultations, consents, dnc, silent, version, known, confirmed = self._read(params, with_confirmation)
        if self._replica and not with_confirmation:
            if version == self._confirmed_version:
                confirmed = self._confirmed
            else:
                with_confirmation = True
                consultations, consents, dnc, silent, version, known, confirmed = self._read(params, True)
        if with_confirmation:
            self._confirmed, self._confirmed_version = confirmed, version
        if version is None or known is None:
            raise StoreError(f"{self.path}: the facts query returned no data_version or known row")
        if version != self._shared_version:
            self._shared.clear()
            self._shared_version = version
        shared = self._shared
        declared = shared.get(("caller_ids", brand))
        if declared is None:
            declared = shared[("caller_ids", brand)] = tuple(
                sorted({r[0] for r in c.execute(_CALLER_IDS, (brand,))}))
        when = None
        if at is not None:
            day = at.date()
            cached = shared.get(("holidays", day))
            if cached is None:
                cached = shared[("holidays", day)] = self._holidays(day)
            when = local_call_time(at, local_holidays, cached)
        return CallFacts(today=today, e164=e164, brand=brand, consultations=tuple(consultations),
                         consents=tuple(consents), dnc=tuple(dnc), silent_calls=tuple(silent), when=when,
                         declared_caller_ids=declared,
                         replica_age=None if confirmed is None else self._clock() - confirmed), known

    def _read(self, params: dict, with_confirmation: bool) -> tuple:
        """The rows of the facts statement, sorted by table; with the replica's confirmation if asked."""
        consultations, consents, dnc, silent = [], [], [], []
        version = known = confirmed = None
        for tag, a, b, d, e, f, g in self.conn.execute(_FACTS_REPLICA if with_confirmation else _FACTS, params):
            if tag == "c":
                consultations.append(Consultation(batch_id=a, consulted_on=date.fromisoformat(b), registered=bool(d),
                                                  brand=e, registration_date=_day(f)))
            elif tag == "k":
                consents.append(ConsentEvent(id=a, kind=b, given_at=date.fromisoformat(d), brand=e,
                                             ends_at=_day(f), evidence=g or ""))
            elif tag == "d":
                dnc.append(DncEntry(id=a, brand=b, reason=d or ""))
            elif tag == "s":
                silent.append(SilentCall(id=a, on=date.fromisoformat(b)))
            elif tag == "v":
                version = a
            elif tag == "n":
                known = a == 1
            else:
                confirmed = a
        return consultations, consents, dnc, silent, version, known, confirmed

    def _holidays(self, day: date) -> dict:
        """The cached national holidays of ``day`` and the next day ("" = none), for
        the years the table covers (a day of another year is left to the package)."""
        c = self.conn
        nxt = day + timedelta(days=1)
        c.execute("BEGIN")
        try:
            years = {r[0] for r in c.execute(_HOLIDAY_YEARS, (day.year, nxt.year))}
            found = dict(c.execute(_HOLIDAYS, (day.isoformat(), nxt.isoformat())).fetchall())
        finally:
            c.execute("COMMIT")
        return {d: found.get(d.isoformat(), "") for d in (day, nxt) if d.year in years}
