"""The audit log's hash chain: verify it, anchor it (daily digest), prune it.

Not on the per-call path. The chain's definition (what a row's hash covers)
lives in :mod:`rpo_guard.audit.log`; this module only reads it, except
:func:`prune`, the one way rows ever leave the log.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .log import COLUMNS, GENESIS, NO_DELETE_TRIGGER, row_hash

_ROW_SQL = f"SELECT id, {', '.join(COLUMNS)}, prev_hash, hash FROM attempts"


def open_ro(path: Path) -> sqlite3.Connection:
    """Read-only connection to audit.db (the file must exist)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: audit database not found")
    return sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True,
                           isolation_level=None, check_same_thread=False)


@dataclass
class Problem:
    kind: str  # edited | replaced | deleted | truncated | inserted | reordered | checkpoint | anchor
    row_id: int | None
    message: str


@dataclass
class VerifyResult:
    rows: int = 0                 # rows checked
    first_id: int | None = None
    last_id: int | None = None
    head_hash: str = GENESIS      # hash of the last intact row (or of the last checkpoint)
    checkpoints: int = 0
    pruned_rows: int = 0
    anchors_checked: int = 0
    notes: list[str] = field(default_factory=list)
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem:
            return f"BROKEN at row {self.problem.row_id}: {self.problem.kind}: {self.problem.message}"
        span = f"rows {self.first_id}..{self.last_id}" if self.rows else "no rows"
        extra = f"; {self.pruned_rows} earlier rows pruned under {self.checkpoints} checkpoint(s)" \
            if self.checkpoints else ""
        anchors = f"; {self.anchors_checked} digest(s) matched" if self.anchors_checked else ""
        return f"OK: {self.rows} row{'' if self.rows == 1 else 's'} intact ({span}), head {self.head_hash[:16]}…{extra}{anchors}"

    def as_dict(self) -> dict:
        return {"ok": self.ok, "rows": self.rows, "first_id": self.first_id, "last_id": self.last_id,
                "head_hash": self.head_hash, "checkpoints": self.checkpoints, "pruned_rows": self.pruned_rows,
                "anchors_checked": self.anchors_checked, "notes": self.notes,
                "problem": None if self.problem is None else {
                    "kind": self.problem.kind, "row_id": self.problem.row_id, "message": self.problem.message}}


def _broken_link(conn, row_id: int, prev_hash: str) -> Problem:
    """Name what happened when row ``row_id`` does not link to the row before it."""
    other = conn.execute("SELECT id FROM attempts WHERE hash = ?", (prev_hash,)).fetchone()
    if other is not None and other[0] > row_id:
        return Problem("reordered", row_id, f"row {row_id} links to row {other[0]}, which comes after it: "
                       "rows were moved")
    if other is not None and other[0] < row_id - 1:
        return Problem("inserted", row_id, f"row {row_id} links to row {other[0]}: "
                       f"row(s) {other[0] + 1}..{row_id - 1} were inserted before it")
    return Problem("replaced", row_id, f"row {row_id} links to a row that is not in the log: row {row_id - 1} "
                   f"was replaced (edited and re-hashed), or row {row_id} was forged")


def verify(conn, anchors: list[dict] | None = None) -> VerifyResult:
    """Walk the whole chain in id order (streaming); stop at the first broken link."""
    res = VerifyResult()
    expected_id, expected_prev = 1, GENESIS
    conn.execute("BEGIN")  # one snapshot for the whole walk
    try:
        for cp in conn.execute("SELECT id, first_id, last_id, rows, first_prev_hash, last_hash"
                               " FROM checkpoints ORDER BY id"):
            cp_id, first_id, last_id, rows, first_prev, last_hash = cp
            if first_id != expected_id or first_prev != expected_prev or rows != last_id - first_id + 1:
                res.problem = Problem("checkpoint", first_id, f"checkpoint {cp_id} (rows {first_id}..{last_id}) "
                                      "does not continue the chain before it")
                return res
            res.checkpoints += 1
            res.pruned_rows += rows
            expected_id, expected_prev = last_id + 1, last_hash
        res.head_hash = expected_prev
        if res.checkpoints:
            res.notes.append(f"rows 1..{expected_id - 1} were pruned; the chain resumes from checkpoint hash "
                             f"{expected_prev[:16]}…")

        cur = conn.execute(_ROW_SQL + " ORDER BY id")
        n = len(COLUMNS)
        while True:
            batch = cur.fetchmany(2000)
            if not batch:
                break
            for r in batch:
                row_id, values, prev_hash, stored = r[0], r[1:n + 1], r[n + 1], r[n + 2]
                if row_id < expected_id:
                    res.problem = Problem("inserted", row_id, f"row {row_id} does not belong to the chain "
                                          f"(the next id expected is {expected_id})")
                    res.head_hash = expected_prev  # the last intact row's hash
                    return res
                if row_id > expected_id:
                    res.problem = Problem("deleted", row_id, f"row(s) {expected_id}..{row_id - 1} are missing "
                                          "(deleted)")
                    res.head_hash = expected_prev  # the last intact row's hash
                    return res
                if prev_hash != expected_prev:
                    res.problem = _broken_link(conn, row_id, prev_hash)
                    res.head_hash = expected_prev  # the last intact row's hash
                    return res
                if row_hash(prev_hash, row_id, values) != stored:
                    res.problem = Problem("edited", row_id, f"row {row_id} no longer matches its hash: "
                                          "its content was changed")
                    res.head_hash = expected_prev  # the last intact row's hash
                    return res
                if res.first_id is None:
                    res.first_id = row_id
                res.last_id = row_id
                res.rows += 1
                expected_id, expected_prev = row_id + 1, stored
        res.head_hash = expected_prev
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'attempts'").fetchone()
        if seq is not None and seq[0] >= expected_id:
            res.problem = Problem("truncated", expected_id, f"row(s) {expected_id}..{seq[0]} were written "
                                  "and are gone (deleted from the end)")
            return res
        for anchor in anchors or ():
            _check_anchor(conn, anchor, res)
            if res.problem:
                return res
    finally:
        conn.execute("COMMIT")
    return res


def _check_anchor(conn, anchor: dict, res: VerifyResult) -> None:
    head_id, head_hash = anchor.get("head_id"), anchor.get("head_hash")
    if not head_id:
        res.notes.append(f"digest of {anchor.get('date')}: no rows to compare")
        return
    row = conn.execute("SELECT hash FROM attempts WHERE id = ?", (head_id,)).fetchone()
    if row is None:
        cp = conn.execute("SELECT last_hash FROM checkpoints WHERE last_id = ?", (head_id,)).fetchone()
        pruned = conn.execute("SELECT 1 FROM checkpoints WHERE ? BETWEEN first_id AND last_id",
                              (head_id,)).fetchone()
        if cp is not None:
            row = cp
        elif pruned is not None:
            res.notes.append(f"digest of {anchor.get('date')}: row {head_id} was pruned; not comparable")
            return
        else:
            res.problem = Problem("anchor", head_id, f"the digest of {anchor.get('date')} names row {head_id}, "
                                  "which is missing")
            return
    if row[0] != head_hash:
        res.problem = Problem("anchor", head_id, f"row {head_id} no longer has the hash the digest of "
                              f"{anchor.get('date')} recorded: the log was rewritten up to there")
        return
    res.anchors_checked += 1


# -- daily digest ----------------------------------------------------------

def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def read_key(path: str) -> bytes:
    key = Path(path).read_bytes().strip()
    if len(key) < 16:
        raise ValueError(f"{path}: the digest key must hold at least 16 bytes")
    return key


def sign(digest: dict, key: bytes) -> str:
    body = {k: v for k, v in digest.items() if k != "hmac_sha256"}
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def check_signature(digest: dict, key: bytes) -> bool:
    sig = digest.get("hmac_sha256")
    return bool(sig) and hmac.compare_digest(sig, sign(digest, key))


def make_digest(conn, day: str, made_at: str, key: bytes | None = None) -> dict:
    """The digest of one day: its counts and the chain head at its end.

    ``head_id``/``head_hash`` are the newest row dated on or before ``day``
    (the date part of ``at``, in the rules' timezone); that one hash fixes
    every attempt up to it, so a copy kept off the machine proves later that
    none of them was rewritten. ``rows``, ``first_id`` and ``last_id`` take
    every row of the day; ``allowed``, ``refused`` and ``by_reason`` only the
    calls to someone: the test calls of simulate-call and selftest, which
    reached no one, are counted apart in ``test_calls`` (digest v2; v1 counted
    them with the others).
    """
    conn.execute("BEGIN")
    try:
        counts = conn.execute(
            "SELECT decision, reason, count(*), min(id), max(id),"
            " coalesce(via, '') = 'simulate' OR coalesce(via, '') LIKE '%-selftest' AS test"
            " FROM attempts WHERE substr(at, 1, 10) = ?"
            " GROUP BY decision, reason, test ORDER BY decision, reason", (day,)).fetchall()
        head = conn.execute("SELECT id, hash FROM attempts WHERE id = (SELECT max(id) FROM attempts"
                            " WHERE substr(at, 1, 10) <= ?)", (day,)).fetchone()
        pruned = conn.execute("SELECT coalesce(max(last_id), 0) FROM checkpoints").fetchone()[0]
    finally:
        conn.execute("COMMIT")
    calls = [c for c in counts if not c[5]]
    digest = {
        "digest": "rpo_guard audit digest v2", "date": day, "made_at": made_at,
        "rows": sum(c[2] for c in counts),
        "allowed": sum(c[2] for c in calls if c[0] == "ALLOW"),
        "refused": sum(c[2] for c in calls if c[0] == "BLOCK"),
        "by_reason": {f"{c[0]} {c[1]}": c[2] for c in calls},
        "test_calls": sum(c[2] for c in counts if c[5]),
        "first_id": min((c[3] for c in counts), default=None),
        "last_id": max((c[4] for c in counts), default=None),
        "head_id": head[0] if head else None, "head_hash": head[1] if head else None,
        "pruned_up_to_id": pruned,
    }
    digest["hmac_sha256"] = sign(digest, key) if key else None
    return digest


# -- retention ---------------------------------------------------------------

@dataclass
class PruneResult:
    rows: int = 0
    checkpoints: list[int] = field(default_factory=list)
    first_id: int | None = None
    last_id: int | None = None


class PruneRefused(Exception):
    pass


def prune_plan(conn, before_iso: str) -> tuple[int, int | None]:
    """(rows to remove, last id to remove): the rows before the first one at or after the cut."""
    keep = conn.execute("SELECT min(id) FROM attempts WHERE julianday(at) >= julianday(?)",
                        (before_iso,)).fetchone()[0]
    if keep is None:
        r = conn.execute("SELECT count(*), max(id) FROM attempts").fetchone()
    else:
        r = conn.execute("SELECT count(*), max(id) FROM attempts WHERE id < ?", (keep,)).fetchone()
    return r[0], r[1]


def prune(conn, before_iso: str, pruned_at: str, pruned_by: str, chunk: int = 5000) -> PruneResult:
    """Remove the attempts written before ``before_iso``, oldest first.

    Works in chunks of ``chunk`` rows, each one short ``BEGIN IMMEDIATE``
    transaction (AGI writers never wait long), which: checks the chunk's rows
    against their hashes and its links to the chain on both sides (a broken
    stretch is never pruned away, the log refuses); records a checkpoint
    holding the chunk's first prev_hash, last hash, id range and counts per
    day/brand/decision/reason; drops the no-delete trigger, deletes the
    chunk and creates the trigger again. A failure rolls all of it back,
    trigger included.
    """
    res = PruneResult()
    _n, last = prune_plan(conn, before_iso)
    if last is None:
        return res
    n = len(COLUMNS)
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(_ROW_SQL + " WHERE id <= ? ORDER BY id LIMIT ?", (last, chunk)).fetchall()
            if not rows:
                conn.execute("ROLLBACK")
                break
            cp = conn.execute("SELECT last_id, last_hash FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
            expected_id, expected_prev = (cp[0] + 1, cp[1]) if cp else (1, GENESIS)
            for r in rows:
                row_id, values, prev_hash, stored = r[0], r[1:n + 1], r[n + 1], r[n + 2]
                if row_id != expected_id or prev_hash != expected_prev or row_hash(prev_hash, row_id, values) != stored:
                    raise PruneRefused(f"row {row_id} does not verify; run `rpo-guard audit verify` "
                                       "(pruning would hide a broken chain)")
                expected_id, expected_prev = row_id + 1, stored
            first_id, last_id = rows[0][0], rows[-1][0]
            nxt = conn.execute("SELECT id, prev_hash FROM attempts WHERE id > ? ORDER BY id LIMIT 1",
                               (last_id,)).fetchone()
            if nxt is not None and (nxt[0] != last_id + 1 or nxt[1] != expected_prev):
                raise PruneRefused(f"row {nxt[0]} does not link to row {last_id}; run `rpo-guard audit verify`")
            counts = conn.execute(
                "SELECT substr(at, 1, 10), brand, decision, reason, count(*) FROM attempts"
                " WHERE id BETWEEN ? AND ? GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4", (first_id, last_id)).fetchall()
            cur = conn.execute(
                "INSERT INTO checkpoints (pruned_at, pruned_by, before, first_id, last_id, rows, first_prev_hash,"
                " last_hash, first_at, last_at, counts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pruned_at, pruned_by, before_iso, first_id, last_id, len(rows), rows[0][n + 1], expected_prev,
                 rows[0][1], rows[-1][1], json.dumps([list(c) for c in counts], ensure_ascii=False)))
            conn.execute("DROP TRIGGER attempts_no_delete")
            conn.execute("DELETE FROM attempts WHERE id BETWEEN ? AND ?", (first_id, last_id))
            conn.execute(NO_DELETE_TRIGGER)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        res.rows += len(rows)
        res.checkpoints.append(cur.lastrowid)
        res.first_id = res.first_id or first_id
        res.last_id = last_id
        if last_id >= last:
            break
    return res
