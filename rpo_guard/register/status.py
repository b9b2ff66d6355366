"""Freshness of the register, per brand: what `rpo-guard status` and monitoring report."""
from __future__ import annotations

import os

import sqlite3
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from rpo_guard.register.sources import ImportFailed


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
    from urllib.parse import quote

    from rpo_guard import perms
    from rpo_guard.register.schema import SCHEMA_VERSION

    today = today or datetime.now(ZoneInfo(cfg.timezone)).date()
    path = cfg.register_db
    if not os.path.isfile(path):  # False too when a folder on the way cannot be searched
        denied = perms.access_denied(path)
        raise ImportFailed(f"{path}: {denied}" if denied else f"{path}: register database not found (run `rpo-guard init`)")
    conn = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True, timeout=5)
    try:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise ImportFailed(f"{path}: {perms.access_denied(path) or exc}") from None
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
