"""The register as a worker thread sees it: a read-only Store that follows a replaced rpo.db;
and, when attempt caps apply, the thread's read-only connection to audit.db that counts attempts."""
from __future__ import annotations

import math
import os
import time
from contextlib import suppress
from typing import TYPE_CHECKING

from rpo_guard.failure_log import log_failure
from rpo_guard.register.store import Store, StoreError

if TYPE_CHECKING:
    from .server import FastAGIServer


# How often a reader looks whether rpo.db was replaced by another file (a restored
# backup, a generation moved or linked into place); meanwhile the file it has open
# answers. Imports write in place and are seen at once (PRAGMA data_version).
STAT_EVERY = 0.02


class RegisterReader:
    """One worker thread's register connection; follows a replaced file."""

    def __init__(self, server: "FastAGIServer"):
        self.server = server
        self.store = None
        self.ident = None
        self.generation = -1
        self.last_error = ""
        self.deadline_at = math.inf  # of the lookup running on this connection (time.monotonic)
        self.next_stat = 0.0  # time.monotonic() from which the file is looked at again
        self.counter = None  # ServerAttempts on this thread's audit.db connection (attempt caps)
        self.counter_generation = -1
        self.counter_error = ""

    def attempts(self):
        """This thread's attempt counter (audit.db read-only, plus the server's attempts
        in flight), reopened after SIGHUP; None when audit.db cannot be opened (logged):
        a capped call is then refused."""
        srv = self.server
        if self.counter is not None and self.counter_generation == srv.generation:
            return self.counter
        from rpo_guard.audit.attempts import AttemptCounter
        from .attempts import ServerAttempts
        cfg = srv.cfg
        if not cfg.lookup_threads:  # in the loop: the writer's own connection
            if srv.audit is None:
                return None  # the warm-up lookup, before the writer exists
            self.counter, self.counter_generation = ServerAttempts(srv.inflight, writer=srv.audit), srv.generation
            return self.counter
        try:
            busy = cfg.busy_timeout_ms if cfg.lookup_threads else min(cfg.busy_timeout_ms, cfg.deadline_ms)
            conn = AttemptCounter.open_readonly(cfg.audit_db, busy).conn
            conn.set_progress_handler(self.past_deadline, 2000)
        except Exception as exc:
            message = f"audit log {cfg.audit_db} (attempt caps): {type(exc).__name__}: {exc}"
            if message != self.counter_error:
                self.counter_error = message
                log_failure(message, cfg.log_file)
            return None
        self.counter_error = ""
        if self.counter is not None and self.counter.conn is not None:
            with suppress(Exception):
                self.counter.conn.close()
        self.counter = ServerAttempts(srv.inflight, conn)
        self.counter_generation = srv.generation
        return self.counter

    def past_deadline(self) -> bool:
        """SQLite's progress handler: a true answer interrupts the running query."""
        return time.monotonic() > self.deadline_at

    def get(self):
        now = time.monotonic()
        if now < self.next_stat and self.store is not None and self.server.generation == self.generation:
            return self.store
        self.next_stat = now + STAT_EVERY
        cfg = self.server.cfg
        path = cfg.register_db
        try:
            st = os.stat(path)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        gen = self.server.generation
        if self.store is not None and ident == self.ident and gen == self.generation:
            return self.store
        if ident is None and self.store is not None:
            return self.store  # the file is being replaced: keep the one we have
        try:
            # in the loop a lock wait must not outlast the deadline; a worker thread is
            # abandoned at the deadline anyway and may wait the configured time
            busy = cfg.busy_timeout_ms if cfg.lookup_threads else min(cfg.busy_timeout_ms, cfg.deadline_ms)
            new = Store(path, busy)
            # SQLite itself gives up (OperationalError: interrupted) once the deadline is past
            new.conn.set_progress_handler(self.past_deadline, 2000)
        except Exception as exc:
            message = f"register database: {type(exc).__name__}: {exc}"
            if message != self.last_error:
                self.last_error = message
                log_failure(message + (" (still answering from the file opened before)" if self.store else ""),
                            cfg.log_file)
            if self.store is not None:
                return self.store
            if isinstance(exc, StoreError):
                raise
            raise StoreError(message) from exc
        self.last_error = ""
        old, self.store, self.ident, self.generation = self.store, new, ident, gen
        if old is not None:
            self.server.stats.register_reopened += 1
            with suppress(Exception):
                old.close()
        return new

