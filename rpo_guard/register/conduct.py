"""Writers of the conduct-code tables: declared caller IDs and silent calls.

Like the importers of :mod:`rpo_guard.sync`, these open the register through
:func:`rpo_guard.register.schema.open_db` (sqlite-utils; not the per-call path) and
write in one transaction. Numbers are validated on the way in.
"""
from __future__ import annotations

import getpass
from datetime import datetime
from zoneinfo import ZoneInfo

from rpo_guard.rules.numbers import normalize


def _now(tz: str) -> datetime:
    return datetime.now(ZoneInfo(tz))


def caller_id_add(cfg, number: str, brand: str = "", note: str = "", who: str | None = None, db=None) -> str:
    """Declare a caller ID (a number of the operator's ROC declaration) for a brand or every brand."""
    from . import lists
    from rpo_guard.rules.callerid import normalize_declared

    e164 = normalize_declared(number)
    scope = f"brand {brand}" if brand else "every brand"
    if not lists.add(cfg, "caller_ids", e164, brand, note, who, db):
        return f"{e164} is already a declared caller ID for {scope}"
    return f"{e164} declared as a caller ID for {scope}"


def caller_id_remove(cfg, number: str, brand: str = "", who: str | None = None, db=None) -> str:
    from . import lists
    from rpo_guard.rules.callerid import normalize_declared

    e164 = normalize_declared(number)
    scope = f"brand {brand}" if brand else "every brand"
    if not lists.remove(cfg, "caller_ids", e164, brand, who, db):
        raise LookupError(f"{e164} is not a declared caller ID for {scope}")
    return f"{e164} is no longer a declared caller ID for {scope} (kept in its history)"


def caller_id_list(cfg, brand: str | None = None, db=None) -> list[dict]:
    """Active declarations; with ``brand``, those that apply to it (its own and every-brand ones)."""
    from .schema import open_db

    db = db or open_db(cfg.register_db, cfg.file_mode, cfg.group)
    sql, params = "SELECT number, brand, note, added_by, added_at FROM caller_ids WHERE removed_at IS NULL", []
    if brand is not None:
        sql += " AND brand IN ('', ?)"
        params.append(brand)
    cols = ("number", "brand", "note", "added_by", "added_at")
    return [dict(zip(cols, r)) for r in db.conn.execute(sql + " ORDER BY brand, number", params)]


def silent_call_add(cfg, number: str, brand: str = "", at: datetime | None = None, uniqueid: str = "",
                    source: str = "cli", who: str | None = None, db=None) -> str:
    """Record a silent call to ``number``; it is refused for ``silent_call_days`` days after."""
    from datetime import timedelta

    from rpo_guard.rules.calendar_it import local_time
    from .schema import open_db

    e164 = normalize(number, cfg.strip_prefixes, cfg.default_region)
    now = _now(cfg.timezone)
    at = local_time(at, cfg.timezone) if at is not None else now
    if at > now + timedelta(minutes=5):
        raise ValueError(f"the silent call at {at.isoformat(timespec='seconds')} is in the future")
    row = {"number": e164, "brand": brand or "", "at": at.isoformat(timespec="seconds"),
           "on_day": at.date().isoformat(), "uniqueid": uniqueid or None, "source": source,
           "recorded_by": who or getpass.getuser(), "recorded_at": now.isoformat(timespec="seconds")}
    until = at.date() + timedelta(days=cfg.silent_call_days)
    if cfg.central and db is None:  # fleet mode (docs/fleet.md)
        if source == "dialplan":  # during a call: on this box at once, and queued for the centre
            from rpo_guard.fleet import replica
            replica.local_write(cfg, "silent_call", row)
            return f"silent call to {e164} on {at.date()} recorded on this box (queued for the centre): " \
                   f"refused until {until} included"
        from rpo_guard.fleet import central
        central.silent_call(cfg, row)
        return f"silent call to {e164} on {at.date()} recorded at the centre: refused until {until} included"
    db = db or open_db(cfg.register_db, cfg.file_mode, cfg.group)
    with db.conn:
        db.conn.execute(
            "INSERT INTO silent_calls (number, brand, at, on_day, uniqueid, source, recorded_by, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (e164, brand or "", at.isoformat(timespec="seconds"), at.date().isoformat(), uniqueid or None,
             source, who or getpass.getuser(), now.isoformat(timespec="seconds")))
    return f"silent call to {e164} on {at.date()} recorded: refused until {until} included"
