"""Group commit of the sessions' audit rows, in the event loop."""
from __future__ import annotations

import asyncio
from contextlib import suppress

from rpo_guard.failure_log import log_failure

from .checkpoint import RETRY, Checkpointer

# A commit costs about as much as writing a few rows, so rows are grouped when
# the server is busy: with more than BATCH_FROM calls in flight, a row waits up
# to BATCH_WINDOW for theirs (BATCH_MAX rows commit at once). With fewer, it is
# committed at once: the saving is small at that load, and the wait (1-2 ms on
# the loop's millisecond timers) would be most of the call's latency (open loop
# at 1,000 calls/s: p50 2.8 -> 1.2 ms, bench/fastagi_load.py).
BATCH_WINDOW = 0.001
BATCH_FROM = 4
BATCH_MAX = 256
# With attempt caps, the page cache of the writer's connection (KiB; SQLite's default is
# 2,000): the counts probe the e164 index at random, and with the default cache most
# probes read a leaf page again (bench/brand_policies.py).
COUNT_CACHE_KIB = 65536


class AuditWriter:
    """Group commit of audit rows, in the event loop.

    A session queues its row with a callback. A flush writes every row queued
    so far in one ``AuditLog.append_many`` transaction and calls each session
    back with its row id (or the error). It runs at once when at most
    BATCH_FROM calls are in flight, else BATCH_WINDOW after the first row of
    the batch, so batches grow with the load (at 16 calls at once about 5
    rows per commit, half the audit CPU per call). Measured against a writer
    thread (whole batches handed over, one commit in flight): 10-20 % less CPU
    per call and lower latency, the GIL hand-offs costing more than the loop
    time the commit takes. A disk that stalls stalls every session either
    way, since each one waits for its own row.

    WAL checkpoints (copying the log back into audit.db, with an fsync) are
    not left to the commits in the loop: a :class:`Checkpointer` thread runs
    them every CHECKPOINT_EVERY seconds, so the loop never waits on that fsync
    (p99 at 16 calls at once 9 -> 5 ms in bench/fastagi_load.py). While the
    thread finishes a checkpoint it holds ``checkpointer.lock``; a scheduled
    flush that finds it held tries again RETRY later instead of waiting, so
    the loop goes on answering.
    """

    def __init__(self, cfg, loop: asyncio.AbstractEventLoop, inflight=None):
        self.cfg = cfg
        self.inflight = inflight  # attempts in flight (attempt caps): released once their rows are committed
        self.loop = loop
        self._pending: list = []
        self._scheduled = False
        self._reopen = False
        self._log = None
        self.written = 0
        self.failed = 0
        self.batches = 0
        self.deferred = 0  # flushes put off while a checkpoint finished
        self._timer = None
        self.more_coming = lambda: False  # set by the server: whether enough calls are in flight to wait
        self.checkpointer = Checkpointer(cfg)

    def submit(self, row: dict, done, held=None) -> None:
        """Queue ``row``; ``done(audit_id, None)`` or ``done(None, error_text)`` follows.
        ``held``: the attempt the row's lookup reserved (``fastagi.attempts``), released
        when the row is committed (it is counted from audit.db then) or has failed."""
        self._pending.append((row, done, held))
        if not self._scheduled:
            if self.more_coming():
                self._scheduled = True
                self._timer = self.loop.call_later(BATCH_WINDOW, self._flush_scheduled)
            else:
                self.flush(wait=False)  # a quiet server: the wait would cost more than it saves
        elif len(self._pending) >= BATCH_MAX and self._timer is not None:
            self.flush_soon()

    def connection(self):
        """The writer's connection to audit.db, opened if need be (the loop counts attempts on
        it: its page cache survives its own commits). Raises when audit.db cannot be opened."""
        if self._log is None or self._reopen:
            self._open()
        return self._log.conn

    def _open(self) -> None:
        from rpo_guard.audit.log import AuditLog
        self._reopen = False
        if self._log is not None:
            self._log.close()
            self._log = None
        self._log = AuditLog(self.cfg.audit_db, self.cfg.audit_busy_timeout_ms, self.cfg.file_mode,
                             synchronous=self.cfg.synchronous)
        if self.inflight is not None:  # the loop counts attempts on it: keep the e164 index in memory
            self._log.conn.execute(f"PRAGMA cache_size = -{COUNT_CACHE_KIB}")

    def flush_soon(self) -> None:
        """Commit at the next loop iteration instead of at the end of the window."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.loop.call_soon(self._flush_scheduled)

    def reopen(self) -> None:
        self._reopen = True

    def _flush_scheduled(self) -> None:
        self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        """Commit the queued rows. ``wait=False`` (the loop's own flushes): if the
        checkpoint thread is finishing a checkpoint, try again RETRY later."""
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        lock = self.checkpointer.lock
        if not lock.acquire(blocking=wait):
            self._scheduled = True
            self._timer = self.loop.call_later(RETRY, self._flush_scheduled)
            self.deferred += 1
            return
        try:
            batch, self._pending = self._pending, []
            if self.inflight is None:
                ids, error = self._write([row for row, _, _ in batch])
            else:
                # commit and release under the counters' lock: no lookup counts a row
                # twice (committed and in flight) or not at all
                with self.inflight.lock:
                    ids, error = self._write([row for row, _, _ in batch])
                    for _, _, held in batch:
                        if held is not None:
                            self.inflight.release(held)
        finally:
            lock.release()
        for i, (_, done, _) in enumerate(batch):
            try:
                done(None, error) if error is not None else done(ids[i], None)
            except Exception as exc:  # a session's bug must not cost the others their answer
                log_failure(f"fastagi: audit callback failed: {type(exc).__name__}: {exc}", self.cfg.log_file)

    def close(self) -> None:
        """Write every row queued so far, then close the log (a last checkpoint)."""
        self.flush()
        self.checkpointer.stop()
        if self._log is not None:
            self._log.close()
            self._log = None
        self.checkpointer.release()

    def _write(self, rows):
        """(ids, None) or (None, error text)."""
        try:
            if self._log is None or self._reopen:
                self._open()
            self.checkpointer.take_over(self._log.conn)
            ids = self._log.append_many(rows)
        except Exception as exc:
            self.failed += len(rows)
            for row in rows:  # an attempt that cannot be recorded is kept in the failure log
                log_failure(f"audit log unwritable ({type(exc).__name__}: {exc}); attempt: {row!r}",
                            self.cfg.log_file)
            if self._log is not None:
                with suppress(Exception):
                    self._log.close()
                self._log = None
            return None, f"{type(exc).__name__}: {exc}"
        self.written += len(rows)
        self.batches += 1
        return ids, None

