"""Shared helpers of the audit tests: rows written through the real AuditLog."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from rpo_guard.audit.log import COLUMNS, AuditLog, row_hash

ROME = ZoneInfo("Europe/Rome")
REASONS = [("ALLOW", "not_registered"), ("ALLOW", "consent"), ("BLOCK", "rpo_registered"),
           ("BLOCK", "not_consulted"), ("BLOCK", "internal_dnc"), ("ALLOW", "contract"),
           ("BLOCK", "consultation_expired"), ("BLOCK", "invalid_number")]


def make_row(i: int, at: datetime | None = None, **over) -> dict:
    at = at or datetime(2026, 10, 1, 9, 0, tzinfo=ROME) + timedelta(hours=i * 7 % 200, minutes=i % 60)
    decision, reason = REASONS[i % len(REASONS)]
    row = {"at": at.isoformat(timespec="milliseconds"), "uniqueid": f"1795{i:06d}.{i}",
           "channel": f"SIP/trunk-{i:08x}", "callerid": f"06{i % 7:08d}", "accountcode": "",
           "brand": ["Energia Uno", "Telco Due", ""][i % 3], "dialed": f"333 {i:07d}",
           "e164": None if reason == "invalid_number" else f"+39333{i:07d}", "decision": decision,
           "reason": reason, "basis": {"kind": "consultation", "batch_id": 1 + i % 2, "consulted_on": "2026-09-30"},
           "detail": f"détail n°{i} ✓", "latency_ms": 1.5 + i / 1000, "via": "agi"}
    row.update(over)
    return row


def fill(path, n: int, start: int = 0, batch: int = 500, **over) -> list[int]:
    log = AuditLog(path)
    ids = []
    try:
        for k in range(start, start + n, batch):
            ids += log.append_many([make_row(i, **over) for i in range(k, min(start + n, k + batch))])
    finally:
        log.close()
    return ids


def raw(path) -> sqlite3.Connection:
    """A plain read-write connection, as an intruder with file access would use."""
    return sqlite3.connect(str(path), isolation_level=None)


def rehash_from(conn, first_id: int) -> None:
    """Recompute the chain from ``first_id`` on, as a careful forger would (triggers dropped)."""
    cols = ", ".join(COLUMNS)
    prev = conn.execute("SELECT hash FROM attempts WHERE id < ? ORDER BY id DESC LIMIT 1", (first_id,)).fetchone()
    prev = prev[0] if prev else "0" * 64
    for r in conn.execute(f"SELECT id, {cols} FROM attempts WHERE id >= ? ORDER BY id", (first_id,)).fetchall():
        h = row_hash(prev, r[0], r[1:])
        conn.execute("UPDATE attempts SET prev_hash = ?, hash = ? WHERE id = ?", (prev, h, r[0]))
        prev = h
