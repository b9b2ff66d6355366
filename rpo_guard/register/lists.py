"""Per-brand lists kept with their history: the do-not-contact list and the declared caller IDs.

:func:`dnc_add`, :func:`dnc_remove` and :func:`dnc_list` are the do-not-contact list's
one-number writers and reader (``rpo-guard dnc``); the caller IDs' are in
:mod:`rpo_guard.register.conduct`.

An entry is (number, brand, a note) with who added it and when; removing it
stamps who removed it and when, and keeps the row, so the list as it stood
on any day can be shown to an auditor. ``brand`` "" means every brand.
"""
from __future__ import annotations

import getpass
from datetime import datetime
from zoneinfo import ZoneInfo

from rpo_guard.rules.numbers import normalize

# table -> the column holding the entry's note
LISTS = {"dnc": "reason", "caller_ids": "note"}


def _stamp(cfg, who: str | None) -> tuple[str, str]:
    return who or getpass.getuser(), datetime.now(ZoneInfo(cfg.timezone)).isoformat(timespec="seconds")


def add(cfg, table: str, e164: str, brand: str, note: str, who: str | None, db=None) -> bool:
    """Add an active entry; False when one is already active for the number and brand.
    In fleet mode the entry is added at the centre (rpo_guard.fleet.central)."""
    from .schema import open_db

    if cfg.central and db is None:
        from rpo_guard.fleet import central
        return central.list_add(cfg, table, e164, brand, note, *_stamp(cfg, who))

    db = db or open_db(cfg.register_db, cfg.file_mode, cfg.group)
    with db.conn:
        cur = db.conn.execute(
            f"INSERT OR IGNORE INTO {table} (number, brand, {LISTS[table]}, added_by, added_at)"
            " VALUES (?, ?, ?, ?, ?)", (e164, brand or "", note, *_stamp(cfg, who)))
    return cur.rowcount > 0


def remove(cfg, table: str, e164: str, brand: str, who: str | None, db=None) -> bool:
    """End the active entry (kept in the history); False when there is none."""
    from .schema import open_db

    if table not in LISTS:
        raise ValueError(f"not a per-brand list: {table!r}")
    if cfg.central and db is None:
        from rpo_guard.fleet import central
        return central.list_remove(cfg, table, e164, brand, *_stamp(cfg, who))
    db = db or open_db(cfg.register_db, cfg.file_mode, cfg.group)
    with db.conn:
        cur = db.conn.execute(
            f"UPDATE {table} SET removed_by = ?, removed_at = ? WHERE number = ? AND brand = ? AND removed_at IS NULL",
            (*_stamp(cfg, who), e164, brand or ""))
    return cur.rowcount > 0


def dnc_add(cfg, number: str, brand: str = "", reason: str = "", who: str | None = None, db=None,
            source: str = "cli") -> str:
    """``source="dialplan"`` (an agent's opt-out taken during a call): in fleet mode the entry
    is applied on this box at once and queued in its outbox for the centre."""
    e164 = normalize(number, cfg.strip_prefixes, cfg.default_region)
    scope = f"brand {brand}" if brand else "every brand"
    if cfg.central and source == "dialplan" and db is None:
        from rpo_guard.fleet import replica
        who, at = _stamp(cfg, who)
        replica.local_write(cfg, "dnc_add", {"number": e164, "brand": brand or "", "reason": reason,
                                             "added_by": who, "added_at": at})
        return f"{e164} added to the do-not-contact list for {scope} on this box (queued for the centre)"
    if not add(cfg, "dnc", e164, brand, reason, who, db):
        return f"{e164} is already on the do-not-contact list for {scope}"
    return f"{e164} added to the do-not-contact list for {scope}"


def dnc_remove(cfg, number: str, brand: str = "", who: str | None = None, db=None) -> str:
    e164 = normalize(number, cfg.strip_prefixes, cfg.default_region)
    scope = f"brand {brand}" if brand else "every brand"
    if not remove(cfg, "dnc", e164, brand, who, db):
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
