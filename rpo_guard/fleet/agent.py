"""`rpo-guard fleet agent`: keeps this box's rpo.db a replica of the centre, forwards its
outbox and ships its audit rows.

One loop, one thread: catch up (every change after the last sequence applied, in one
SQLite transaction with the sequence and the confirmation time), land a chunk of a
pending consultation (then catch up again, so an opt-out never waits behind millions of
rows), forward the outbox, ship the audit rows, report to the centre, and wait for a
NOTIFY, new local work or ``[fleet] heartbeat_seconds``. A wake for new audit rows
alone ships them and nothing else: catching up and reporting are for a NOTIFY and for
the heartbeat (counted from the last catch-up, so that a steady stream of audit rows
never delays the replica's confirmation), which keeps a busy box from committing to
rpo.db and the centre several times a second for nothing. Any trouble with the centre:
note it in rpo.db, wait a little, reconnect and carry on from the last sequence applied.
While the centre is away the replica is not confirmed, and calls are refused once it is
older than ``[fleet] max_staleness_seconds`` (rpo_guard.rules.decision, ``replica_stale``).
"""
from __future__ import annotations

import signal
import sqlite3
import sys
import time

from . import central, replica
from .schema import CHANNEL, CentralError, check, connect

AUDIT_CHUNK = 5000
POLL = 0.05  # seconds between looks at the outbox and audit.db while waiting for the centre


class Agent:
    def __init__(self, cfg, clock_offset: float = 0.0, log=None, chunk_rows: int = replica.CHUNK_ROWS):
        self.cfg = cfg
        self.box = cfg.box_name
        self.offset = clock_offset
        self.chunk_rows = chunk_rows
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.stopping = False
        self.conn = replica.open_replica(cfg)
        self.pg = self.listen = None
        self.version = _version()
        self.shipped = 0  # the newest audit id the centre holds for this box (as last seen)
        self._audit_conn = None
        self._tail_known = False  # whether self.shipped was read from the centre on this connection
        self._caught_up_at = None  # time.monotonic() of the last catch-up (None: due)
        self._woken_by = "start"  # what ended the last wait: start, notify, outbox, audit, heartbeat

    def clock(self) -> float:
        return time.time() + self.offset

    def stop(self, *_):
        self.stopping = True

    # ------------------------------------------------------------------ connection
    def _connect(self):
        self.pg = connect(self.cfg.central, autocommit=True)
        check(self.pg)
        self.listen = connect(self.cfg.central, autocommit=True)
        self.listen.execute(f"LISTEN {CHANNEL}")
        self._tail_known = False

    def _disconnect(self):
        for c in (self.pg, self.listen):
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
        self.pg = self.listen = None

    # ------------------------------------------------------------------ one round
    def _catch_up_due(self) -> bool:
        return self._woken_by != "audit" or self._caught_up_at is None or \
            time.monotonic() - self._caught_up_at >= self.cfg.heartbeat_seconds

    def _catch_up(self) -> None:
        self._caught_up_at = time.monotonic()
        replica.catch_up(self.conn, self.pg, self.clock)

    def round(self) -> None:
        """Catch up, land pending consultations chunk by chunk, forward, ship, report
        (after a wake for audit rows alone, only ship them unless the heartbeat is due)."""
        if not self._catch_up_due():
            self.ship_audit()
            return
        self._catch_up()
        while not self.stopping and replica.land_chunk(self.conn, self.pg, self.chunk_rows):
            self._catch_up()
        if replica.forward_outbox(self.conn, self.pg, self.box):
            self._catch_up()
        self.ship_audit()
        st = replica.state(self.conn)
        central.report_box(self.pg, self.box, st["last_seq"], st["centre_at"], st["outbox_depth"], st["pending_batches"],
                           self._audit_tail(), st["skew_seconds"], self.version)

    def _audit(self):
        """audit.db, read-only, kept open (None while it does not exist)."""
        if self._audit_conn is None:
            try:
                from rpo_guard.audit.chain import open_ro
                self._audit_conn = open_ro(self.cfg.audit_db)
            except (FileNotFoundError, sqlite3.Error):
                return None
        return self._audit_conn

    def _audit_tail(self):
        a = self._audit()
        if a is None:
            return None
        try:
            return a.execute("SELECT max(id) FROM attempts").fetchone()[0]
        except sqlite3.Error:
            self._audit_conn = None
            return None

    def ship_audit(self) -> int:
        """Ship audit rows after the last one the centre holds for this box, in id order.

        The centre's tail is read once per connection; after that the newest row this agent
        shipped is the tail (a box has one agent, and a second delivery is skipped anyway)."""
        a = self._audit()
        if a is None:
            return 0
        if not self._tail_known:
            self.shipped = central.shipped_tail(self.pg, self.box)[0]
            self._tail_known = True
        shipped = 0
        while not self.stopping:
            rows = a.execute(f"SELECT {', '.join(central.AUDIT_COLUMNS)} FROM attempts WHERE id > ?"
                             " ORDER BY id LIMIT ?", (self.shipped, AUDIT_CHUNK)).fetchall()
            if not rows:
                break
            shipped += central.ship_attempts(self.pg, self.box, rows)
            self.shipped = rows[-1][0]
            if len(rows) < AUDIT_CHUNK:
                break
        return shipped

    def _note(self, error: str) -> None:
        try:
            with self.conn:
                self.conn.execute("UPDATE fleet_replica SET agent_alive_at = ?, last_error = ? WHERE id = 1",
                                  (self.clock(), error[:500]))
        except sqlite3.Error:
            pass

    def _local_work(self) -> str | None:
        """What this box has to send: "outbox" (an unsent entry), "audit" (new audit rows) or None."""
        if self.conn.execute("SELECT EXISTS (SELECT 1 FROM fleet_outbox WHERE applied_seq IS NULL)").fetchone()[0]:
            return "outbox"
        tail = self._audit_tail()
        return "audit" if tail is not None and tail > self.shipped else None

    def _wait(self, seconds: float) -> None:
        """Until a NOTIFY arrives, local work appears (polled every POLL seconds) or ``seconds``
        pass since the last catch-up; notes which in ``_woken_by``."""
        start = self._caught_up_at if self._caught_up_at is not None else time.monotonic()
        deadline = start + seconds
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                self._woken_by = "heartbeat"
                return
            if any(True for _ in self.listen.notifies(timeout=min(POLL, left), stop_after=1)):
                for _ in self.listen.notifies(timeout=0.001):  # drain the others queued
                    pass
                self._woken_by = "notify"
                return
            work = self._local_work()
            if work:
                self._woken_by = work
                return

    def run(self, once: bool = False) -> None:
        try:
            import psycopg
        except ImportError:
            raise CentralError("fleet mode needs psycopg 3: pip install 'rpo_guard[fleet]'") from None

        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        backoff = 0.2
        beat = self.cfg.heartbeat_seconds
        self.log(f"rpo-guard fleet agent: box {self.box}, replica {self.cfg.register_db}")
        while not self.stopping:
            try:
                if self.pg is None:
                    self._connect()
                    self._woken_by = "start"  # after a reconnection: a whole round
                    self.log("connected to the centre")
                self.round()
                backoff = 0.2
                if once:
                    return
                self._wait(beat)
            except (CentralError, psycopg.Error, OSError) as exc:
                message = f"{type(exc).__name__}: {exc}".strip()
                self.log(f"centre: {message} (retrying in {backoff:.1f} s)")
                self._note(message)
                self._disconnect()
                if once:
                    raise
                deadline = time.monotonic() + backoff
                while not self.stopping and time.monotonic() < deadline:
                    time.sleep(0.05)
                backoff = min(backoff * 2, max(1.0, beat / 2))
        self._disconnect()
        if self._audit_conn is not None:
            self._audit_conn.close()
        self.conn.close()


def _version() -> str:
    from rpo_guard.register.schema import package_version
    return package_version()
