"""Calendar facts for the calling-hours rule: the local time and Italian holidays.

National public holidays come from the ``holidays`` package (Easter and
Easter Monday computed, 4 October restored from 2026 by Legge 151/2025).
Importing it costs ~70 ms, too much for every call of the process AGI, so:

* the tools that write the register (``rpo-guard init``, imports, ``dnc``,
  ``caller-id``, ``silent-call``: everything that opens it through
  :func:`rpo_guard.register.schema.open_db`) store the holidays of last, this and next
  year in rpo.db (tables ``holidays`` and ``holiday_years``, with the
  package version that produced them; a new package version refills them);
* the per-call reader looks today and tomorrow up there (a long-running
  server keeps them until PRAGMA data_version says rpo.db changed);
* a year the table does not cover is computed with the package, lazily, at
  call time (slow but right): never an unknown calendar.

Local holidays (patron saints) are a setting, ``[conduct] local_holidays``,
applied on top here. The decision itself reads no clock and no table.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from functools import lru_cache

from .decision import CallTime

SAN_FRANCESCO = "San Francesco d'Assisi (Legge 151/2025)"
SAN_FRANCESCO_FROM = 2026  # national holiday again from 1 January 2026


@lru_cache(maxsize=16)
def national_holidays(year: int) -> dict[date, str]:
    """Italy's national public holidays of ``year`` (date -> name), from the ``holidays`` package.

    4 October is added from 2026 when the installed package does not know it
    (versions before its Legge 151/2025 update).
    """
    import holidays

    return with_san_francesco(year, dict(holidays.country_holidays("IT", years=year).items()))


def with_san_francesco(year: int, days: dict[date, str]) -> dict[date, str]:
    """``days`` with 4 October added from 2026 if missing (Legge 151/2025)."""
    if year >= SAN_FRANCESCO_FROM:
        days.setdefault(date(year, 10, 4), SAN_FRANCESCO)
    return days


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("holidays")
    except PackageNotFoundError:
        return "?"


def local_holiday(day: date, local_holidays: tuple[str, ...]) -> str:
    """The configured local holiday on ``day``, or ""."""
    md, full = day.strftime("%m-%d"), day.isoformat()
    for item in local_holidays:
        if item == md or item == full:
            return f"local holiday {item}"
    return ""


def local_time(at: datetime, tz: str) -> datetime:
    """``at`` as a wall-clock time in ``tz``; DST applied.

    Through UTC, so that a naive-looking local time that does not exist (02:30
    on the last Sunday of March) is normalized to the real instant (03:30).
    A naive ``at`` is read as local time in ``tz``.
    """
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)
    if at.tzinfo is None:
        at = at.replace(tzinfo=zone)
    return at.astimezone(timezone.utc).astimezone(zone)


def call_time(at: datetime, tz: str, local_holidays: tuple[str, ...] = (),
              cached: dict[date, str | None] | None = None) -> CallTime:
    """The :class:`CallTime` of a call at ``at``.

    ``cached`` maps a day to its national holiday name ("" = none) for the
    days the register database could answer; a day missing from it is asked
    of the ``holidays`` package.
    """
    return local_call_time(local_time(at, tz), local_holidays, cached)


def local_call_time(local: datetime, local_holidays: tuple[str, ...] = (),
                    cached: dict[date, str | None] | None = None) -> CallTime:
    """:func:`call_time` of a time already local (as :func:`local_time` returns it)."""
    cached = cached or {}

    def name(day: date) -> str:
        national = cached[day] if day in cached else national_holidays(day.year).get(day, "")
        loc = local_holiday(day, local_holidays) if local_holidays else ""
        return f"{national}; {loc}" if national and loc else national or loc

    day = local.date()
    return CallTime(local=local, holiday=name(day), next_holiday=name(day + timedelta(days=1)))


def refresh_cache(conn, years: list[int]) -> list[int]:
    """Store the national holidays of ``years`` in rpo.db; returns the years (re)written.

    A year already stored by the same package version is left alone, so this
    is cheap (no import of ``holidays``) when nothing changed.
    """
    ver = package_version()
    have = dict(conn.execute("SELECT year, source FROM holiday_years").fetchall())
    todo = [y for y in years if have.get(y) != f"holidays {ver}"]
    if not todo:
        return []
    rows = [(d.isoformat(), y, n) for y in todo for d, n in sorted(national_holidays(y).items())]
    with conn:
        conn.executemany("DELETE FROM holidays WHERE year = ?", [(y,) for y in todo])
        conn.executemany("INSERT INTO holidays (day, year, name) VALUES (?, ?, ?)", rows)
        conn.executemany("INSERT OR REPLACE INTO holiday_years (year, source) VALUES (?, ?)",
                         [(y, f"holidays {ver}") for y in todo])
    return todo


def cache_years(today: date) -> list[int]:
    return [today.year - 1, today.year, today.year + 1]
