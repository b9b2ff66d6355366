"""The FastAGI server: ``rpo-guard serve [--listen HOST:PORT]``.

Asterisk connects for each call (``AGI(agi://127.0.0.1:4573/rpo_guard,NUMBER,BRAND)``),
sends the environment block (``agi_network: yes``, ``agi_network_script``
with any query string, ``agi_arg_N``, then an empty line) and answers our
commands one at a time. The session is the process AGI's, on the same code:
:func:`rpo_guard.guard.check_call` decides, :func:`rpo_guard.guard.audit_row`
builds the audit row, and the channel gets ``RPO_RESULT``, ``RPO_REASON`` and
``RPO_AUDIT_ID`` with the same ``SET VARIABLE "NAME" "VALUE"`` bytes pyst2 sends.

Design (one event loop thread; uvloop by default, ``[fastagi] event_loop``):

* each connection is a :class:`_Session`, an ``asyncio.Protocol`` state
  machine: no task, no stream reader and no timer per read. Every waiting
  state has a deadline the server's sweeper enforces a few times per read
  timeout. Against asyncio streams with a task per call, this and uvloop
  halve the CPU a call costs in protocol handling (bench/fastagi_load.py).
* lookups (about 30 us on a 20-million-number register) run in the loop thread by
  default (``lookup_threads = 0``) on a long-lived read-only
  :class:`~rpo_guard.store.Store`: SQLite's progress handler interrupts a
  query once ``deadline_ms`` is past and the store's busy timeout is capped
  at the deadline, so a lookup answers ``BLOCK``/``error`` in time (and is
  recorded). With ``lookup_threads = N`` they run in N worker threads, each
  with its own store, and the session stops waiting at the deadline whatever
  the thread is stuck on (storage that can stall); this costs CPU per call
  (GIL hand-offs).
* the register is in WAL mode: imports committed in place are seen by the
  next read transaction of an open connection. A *replaced* file (new inode)
  is detected by ``stat`` before each lookup; the worker opens the new file
  and only then drops the old connection, so no lookup ever fails on a swap.
  If the new file cannot be opened yet, the old connection keeps answering.
* audit rows are group-committed (:class:`AuditWriter`: one
  ``AuditLog.append_many`` transaction for all rows waiting). The session
  answers once its row is committed, so ``RPO_AUDIT_ID`` is the row id, as in
  the process AGI, and an attempt that cannot be recorded is refused
  (``BLOCK``/``error``), as there.
* commands are sent one at a time, each after the previous response: res_agi
  reads the socket through a stdio buffer and would not see a second
  pipelined command until more bytes arrived.
* Asterisk writes an inline ``HANGUP`` line when the caller hangs up, possibly
  before the response to a pending command; it is skipped (and noted) while
  reading responses. When done the server half-closes, reads Asterisk's
  trailing ``HANGUP`` and the end of the stream, and closes.
* every read is bounded in time (``read_timeout_ms``) and size
  (``max_request_bytes``); a silent, garbled, half-closed or oversized client
  costs its own connection only.
* peers outside ``allowed_peers`` are closed at once; more than
  ``max_connections`` sessions at once are closed at once. Asterisk then sees
  a session that set nothing, and the shipped dialplan blocks the call.
* SIGTERM/SIGINT: stop listening, let in-flight sessions finish (at most
  ``drain_timeout_ms``), flush the audit writer, exit 0. SIGHUP: reopen the
  audit log and the register connections (log rotation, moved files).
"""
from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime

from .decision import error_verdict
from .failure_log import log_failure
from .guard import RESULT_VALUES, Outcome, audit_row, check_call, safe_value
from .store import Store, StoreError


class ServeError(Exception):
    """The server cannot start as configured."""


class ProtocolError(Exception):
    """The peer did not speak FastAGI as Asterisk does."""


def parse_env(block: bytes) -> dict[str, str]:
    """The environment block (``key: value`` lines, then an empty line) as a dict."""
    env: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        if not line:
            continue
        key, sep, value = line.partition(": ")
        if not sep:  # "agi_x:" with nothing after it
            key, sep, value = line.rstrip("\r").partition(":")
        if not sep or not key.startswith("agi_") or not key.isidentifier():
            raise ProtocolError(f"not an AGI environment line: {line[:80]!r}")
        env[key] = value.rstrip("\r")
    if "agi_request" not in env:
        raise ProtocolError("environment block without agi_request")
    return env


def agi_args(env: dict[str, str]) -> list[str]:
    args, i = [], 1
    while f"agi_arg_{i}" in env:
        args.append(env[f"agi_arg_{i}"])
        i += 1
    return args


@dataclass
class Stats:
    sessions: int = 0            # environment block read, answered
    allowed: int = 0
    blocked: int = 0
    errors: int = 0              # answered BLOCK/error (lookup failure, deadline, audit)
    deadline_exceeded: int = 0
    protocol_errors: int = 0     # sessions dropped: silence, garbage, oversize, early close
    refused_peers: int = 0
    refused_busy: int = 0
    register_reopened: int = 0
    hangups_seen: int = 0
    reasons: dict = field(default_factory=dict)


# How often a reader looks whether rpo.db was replaced by another file (a restored
# backup, a generation moved or linked into place); meanwhile the file it has open
# answers. Imports write in place and are seen at once (PRAGMA data_version).
STAT_EVERY = 0.02


class _RegisterReader:
    """One worker thread's register connection; follows a replaced file."""

    def __init__(self, server: "FastAGIServer"):
        self.server = server
        self.store = None
        self.ident = None
        self.generation = -1
        self.last_error = ""
        self.deadline_at = math.inf  # of the lookup running on this connection (time.monotonic)
        self.next_stat = 0.0  # time.monotonic() from which the file is looked at again

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


# A commit costs about as much as writing a few rows, so rows are grouped when
# the server is busy: with more than BATCH_FROM calls in flight, a row waits up
# to BATCH_WINDOW for theirs (BATCH_MAX rows commit at once). With fewer, it is
# committed at once: the saving is small at that load, and the wait (1-2 ms on
# the loop's millisecond timers) would be most of the call's latency (open loop
# at 1,000 calls/s: p50 2.8 -> 1.2 ms, bench/fastagi_load.py).
BATCH_WINDOW = 0.001
BATCH_FROM = 4
BATCH_MAX = 256


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
    not left to the commits in the loop: a :class:`_Checkpointer` thread runs
    them every CHECKPOINT_EVERY seconds, so the loop never waits on that fsync
    (p99 at 16 calls at once 9 -> 5 ms in bench/fastagi_load.py). While the
    thread finishes a checkpoint it holds ``checkpointer.lock``; a scheduled
    flush that finds it held tries again RETRY later instead of waiting, so
    the loop goes on answering.
    """

    def __init__(self, cfg, loop: asyncio.AbstractEventLoop):
        self.cfg = cfg
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
        self.checkpointer = _Checkpointer(cfg)

    def submit(self, row: dict, done) -> None:
        """Queue ``row``; ``done(audit_id, None)`` or ``done(None, error_text)`` follows."""
        self._pending.append((row, done))
        if not self._scheduled:
            if self.more_coming():
                self._scheduled = True
                self._timer = self.loop.call_later(BATCH_WINDOW, self._flush_scheduled)
            else:
                self.flush(wait=False)  # a quiet server: the wait would cost more than it saves
        elif len(self._pending) >= BATCH_MAX and self._timer is not None:
            self.flush_soon()

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
            ids, error = self._write([row for row, _ in batch])
        finally:
            lock.release()
        for i, (_, done) in enumerate(batch):
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
        from .audit_log import AuditLog

        try:
            if self._log is not None and self._reopen:
                self._reopen = False
                self._log.close()
                self._log = None
            if self._log is None:
                self._log = AuditLog(self.cfg.audit_db, self.cfg.audit_busy_timeout_ms, self.cfg.file_mode,
                                     synchronous=self.cfg.synchronous)
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


CHECKPOINT_EVERY = 1.0
RETRY = 0.001  # the loop's timers have millisecond resolution (uvloop: a shorter delay is 0)
# The checkpoint thread's nice value, above the loop's: its copying can wait a little, the
# calls cannot (p99 at 1,000 calls/s with a 1,000,000-row log: 1.0-1.7 ms against 1.6-2.2 at
# the loop's own priority, bench/fastagi_load.py). Raising one's own nice needs no privilege;
# the pass that holds off the commits is short (~0.2 ms median, a few ms at most) either way.
CHECKPOINT_NICE = 10


class _Checkpointer:
    """Checkpoints audit.db's WAL from a thread of its own.

    The writer connection's automatic checkpoints are turned off
    (``wal_autocheckpoint = 0``) once this thread runs; every
    CHECKPOINT_EVERY seconds it runs a PASSIVE checkpoint on a connection of
    its own (it never blocks a writer or a reader; SQLite releases the GIL
    while it copies and syncs), opened anew when audit.db is another file.

    The WAL starts over from its beginning only when a commit finds every
    frame already copied back. Under steady load some commit always lands
    while a checkpoint runs, so a checkpoint alone would leave the WAL
    growing for as long as the calls keep coming (200 MB in 10 s at one call
    at a time, each commit extending the file). So each run is two passes:
    the bulk with the writer going on, then the few frames committed
    meanwhile while holding ``lock``, which the writer takes for each commit.
    Still holding it, the thread writes once (user_version, unchanged): that
    write starts the WAL over and syncs its new header, an fsync the loop's
    next commit would otherwise make (measured: the loop thread blocked in
    fdatasync once per checkpoint).

    SQLite syncs audit.db only at the end of a pass that leaves no frame
    behind, i.e. in the pass that holds off the commits, and that sync then
    had to write every page the bulk pass had copied (with a large log those
    are scattered index pages: 15 ms and more with 1,000,000 rows, and every
    call arriving meanwhile waited). So between the two passes the thread
    syncs audit.db itself, through a descriptor of its own: the last pass's
    sync is left only its own few pages. That descriptor is never closed
    while the server's SQLite connections are open (closing any descriptor
    of a file drops every POSIX lock the process holds on it, SQLite's
    included): one per file audit.db has been, closed by :meth:`release`
    after the writer's connection.

    If a checkpoint fails, the writer turns its automatic checkpoints back on
    at its next commit (logged once), so the WAL never grows without bound.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed = ""
        self.runs = 0
        self._writer = None
        self._handed_back = False
        self.lock = threading.Lock()
        self._conn = None  # the thread's connection (see _connection)
        self._ident = None
        self._fds: dict = {}  # (st_dev, st_ino) -> a read-only descriptor, for the sync (see above)

    def take_over(self, writer) -> None:
        """Called (in the loop thread) before each commit of the writer connection."""
        if writer is self._writer:
            if self.failed and not self._handed_back:
                writer.execute("PRAGMA wal_autocheckpoint = 1000")  # SQLite's default
                self._handed_back = True
            return
        self._writer, self._handed_back = writer, False
        if self.failed:
            return  # a new connection keeps its automatic checkpoints
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rpo-guard-checkpoint", daemon=True)
            self._thread.start()

    def checkpoint(self) -> None:
        conn = self._connection()
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # the bulk, commits going on
            _sync(self._fds[self._ident])  # its pages, written now rather than under the lock
            with self.lock:  # the rest, with no commit landing
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                # The first write after it starts the WAL over and syncs the new header:
                # made here (rewriting user_version as it is), that fsync is not the loop's.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    conn.execute(f"PRAGMA user_version = {int(version)}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except BaseException:
            self._close()
            raise
        self.runs += 1

    def _connection(self):
        """The thread's own connection to audit.db, kept between runs (a connection
        opened for each run was seen never to start the WAL over after the first
        time) and opened anew when the file is another one (moved, restored)."""
        import sqlite3
        path = self.cfg.audit_db
        st = os.stat(path)
        if self._conn is not None and self._ident == (st.st_dev, st.st_ino):
            return self._conn
        self._close()
        conn = sqlite3.connect(path, timeout=self.cfg.audit_busy_timeout_ms / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA synchronous = {self.cfg.synchronous}")
        self._conn, self._ident = conn, (st.st_dev, st.st_ino)
        if self._ident not in self._fds:
            self._fds[self._ident] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return conn

    def _close(self) -> None:
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
            self._conn = None

    def _run(self) -> None:
        with suppress(OSError, AttributeError):  # Linux: a thread's own nice value, by its id
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, 0) + CHECKPOINT_NICE)
        while not self._stop.wait(CHECKPOINT_EVERY):
            try:
                self.checkpoint()
            except Exception as exc:
                self.failed = f"{type(exc).__name__}: {exc}"
                log_failure(f"audit log checkpoint failed ({self.failed}); the writer checkpoints by itself "
                            "from now on", self.cfg.log_file)
                return

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if not self.failed:
            with suppress(Exception):
                self.checkpoint()
        self._close()

    def release(self) -> None:
        """Close the sync descriptors: only once no connection of this process has audit.db open."""
        for fd in self._fds.values():
            with suppress(OSError):
                os.close(fd)
        self._fds.clear()


_sync = getattr(os, "fdatasync", os.fsync)


# Session states, in order.
_ENV, _CHECK, _AUDIT, _COMMANDS, _DRAIN, _DONE = range(6)


class _Session(asyncio.Protocol):
    """One FastAGI call: a state machine the event loop drives.

    ``_ENV``      reading the environment block (bounded in time and size);
    ``_CHECK``    the lookup runs (in the loop, or in a worker thread);
    ``_AUDIT``    the row is queued on the :class:`AuditWriter`;
    ``_COMMANDS`` one ``SET VARIABLE`` at a time, each after the previous response;
    ``_DRAIN``    half-closed; Asterisk's trailing ``HANGUP`` and EOF are read;
    ``_DONE``     closed (answered, refused or dropped).

    Every waiting state has a deadline (``expires``, on the loop clock) that
    the server's sweeper enforces; one float per session instead of a timer
    per read. Bytes that arrive before our first command (an inline
    ``HANGUP``) are kept for the response reader.
    """

    def __init__(self, server: "FastAGIServer"):
        self.server = server
        self.transport = None
        self.state = _DONE  # until connection_made accepts the peer
        self.buf = b""
        self.expires = 0.0
        self.peer_eof = False
        self.hangup = False
        self.in_usage = False  # inside a multi-line 520 usage block
        self.commands: list = []
        self.sent = 0
        self.request = None  # (env, dialed, brand, callerid_arg, started)
        self.verdict = None

    # ---- transport events ----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        srv = self.server
        if not srv.admit(self, transport.get_extra_info("peername")):
            transport.abort()
            return
        self.state = _ENV
        self.expires = srv.loop.time() + srv.read_timeout

    def data_received(self, data: bytes) -> None:
        try:
            state = self.state
            if state == _DRAIN or state == _DONE:
                return  # after our EOF only Asterisk's HANGUP comes: dropped
            buf = self.buf + data if self.buf else data
            limit = self.server.max_request
            if state == _ENV:
                end = buf.find(b"\n\n")
                if end < 0 or end + 2 > limit:
                    if end >= 0 or len(buf) > limit:
                        self.fail("environment block longer than max_request_bytes")
                    else:
                        self.buf = buf
                    return
                self.buf = buf[end + 2:]
                self.begin(buf[:end + 2])
            elif state == _COMMANDS:
                self.buf = buf
                self.read_responses()
            elif len(buf) > limit:
                self.fail("more than max_request_bytes before the first command")
            else:
                self.buf = buf  # an inline HANGUP before our first command: read with the responses
        except Exception as exc:  # never the server
            self.crash(exc)

    def eof_received(self):
        if self.state == _DRAIN:
            self.finish()
            return False
        if self.state in (_CHECK, _AUDIT):
            # Asterisk hung up after sending the request: the attempt is still checked
            # and recorded; sending the answer then fails (a protocol error, as before).
            self.peer_eof = True
            return True
        self.fail("the peer closed the connection before the session ended")
        return False

    def connection_lost(self, exc) -> None:
        if self.state in (_CHECK, _AUDIT):
            self.peer_eof = True  # the row is still written when the check completes
            return
        if self.state != _DONE:
            self.fail("connection lost" + (f": {exc}" if exc else ""))

    # ---- the session ----------------------------------------------------------------
    def begin(self, block: bytes) -> None:
        started = time.perf_counter()
        srv = self.server
        env = parse_env(block)  # ProtocolError: counted by fail() through crash()
        args = agi_args(env)
        dialed = args[0] if args else ""
        brand = args[1] if len(args) > 1 else ""
        callerid_arg = args[2] if len(args) > 2 else None
        srv.stats.sessions += 1
        self.state = _CHECK
        self.request = (env, dialed, brand, callerid_arg, started)
        # the lookup answers by its deadline; this is only a backstop if that answer never comes
        self.expires = srv.loop.time() + srv.deadline + srv.read_timeout
        # as the process AGI: the third argument, else CALLERID(num), is the number presented
        caller_id = callerid_arg if callerid_arg is not None else env.get("agi_callerid", "")
        srv.check(self, dialed, brand, caller_id, env.get("agi_callingpres", ""))

    def checked(self, outcome: Outcome) -> None:
        """The lookup's answer (from the loop, a worker thread's future, or the deadline)."""
        if self.state != _CHECK:
            return  # the deadline answered first
        srv = self.server
        env, dialed, brand, callerid_arg, started = self.request
        self.verdict = verdict = outcome.verdict
        if verdict.reason == "error":
            log_failure(f"call {env.get('agi_uniqueid', '?')} to {dialed!r} blocked on error: {verdict.detail}",
                        srv.cfg.log_file)
        self.state = _AUDIT
        # Bounded by the audit log's own lock timeout plus a margin, not by the lookup
        # deadline: an answer given before the commit could contradict the row written.
        self.expires = srv.loop.time() + srv.audit_wait
        srv.audit.submit(audit_row(outcome, env, dialed, brand, callerid_arg, started, "fastagi"), self.audited)

    def audited(self, audit_id, error) -> None:
        if self.state != _AUDIT:
            return  # answered already (audit wait expired)
        srv = self.server
        verdict = self.verdict
        result, reason = verdict.decision, verdict.reason
        if error is not None:
            # Not recorded: refused. The writer keeps failed rows in the failure log.
            result, reason, audit_id = "BLOCK", "error", ""
            late = error is _LATE
            log_failure(f"call {self.request[0].get('agi_uniqueid', '?')} refused: audit row "
                        + (f"not committed after {srv.audit_wait:g} s (it may still be written with "
                           f"decision {verdict.decision})" if late else f"not written ({error})"),
                        srv.cfg.log_file)
        answer = srv.answers.get((result, reason))
        if answer is None:
            answer = srv.answer(result, reason)
        result, reason, commands = answer
        stats = srv.stats
        if reason == "error":
            stats.errors += 1
        if result == "ALLOW":
            stats.allowed += 1
        else:
            stats.blocked += 1
        stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
        if self.peer_eof or self.transport.is_closing():
            self.fail("the peer closed the connection before the answer")
            return
        self.commands = commands
        if audit_id:  # a row id: digits only
            self.commands = [*commands, b'SET VARIABLE "RPO_AUDIT_ID" "%d"\n' % audit_id]
        self.state = _COMMANDS
        self.sent = 1
        self.expires = srv.loop.time() + srv.read_timeout
        self.transport.write(self.commands[0])
        if self.buf:
            self.read_responses()

    def read_responses(self) -> None:
        """Each complete response line sends the next command; inline HANGUP lines are skipped."""
        buf = self.buf
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > self.server.max_request:
                    self.fail("response line longer than max_request_bytes")
                    return
                break
            line = buf[:nl].rstrip(b"\r")
            buf = buf[nl + 1:]
            if line == b"HANGUP":
                self.hangup = True
                continue
            if self.in_usage:  # a 520 usage block ends with its "520 " line
                if not line.startswith(b"520 "):
                    continue
                self.in_usage = False
            elif line.startswith(b"520-"):
                self.in_usage = True
                continue
            if self.sent < len(self.commands):
                self.transport.write(self.commands[self.sent])
                self.sent += 1
                self.expires = self.server.loop.time() + self.server.read_timeout
                continue
            # Done: half-close; Asterisk answers with HANGUP and closes its side.
            if self.hangup:
                self.server.stats.hangups_seen += 1
            self.state = _DRAIN
            self.buf = b""
            self.expires = self.server.loop.time() + self.server.read_timeout
            if self.transport.can_write_eof():
                self.transport.write_eof()
            return
        self.buf = buf

    def expired(self) -> None:
        """The sweeper found this session past its deadline."""
        if self.state == _AUDIT:
            self.audited(None, _LATE)
        elif self.state == _CHECK:
            # The lookup answers by its own deadline (progress handler, or the thread timer);
            # still waiting well past it means that answer was lost: drop the connection, so
            # Asterisk gets no answer and the dialplan blocks, instead of holding the channel.
            log_failure(f"call {self.request[0].get('agi_uniqueid', '?')}: no lookup answer "
                        f"{self.server.deadline + self.server.read_timeout:g} s after the request; dropped",
                        self.server.cfg.log_file)
            self.fail("lookup never answered")
        else:
            self.fail("read timeout")

    # ---- endings --------------------------------------------------------------------
    def finish(self) -> None:
        self.state = _DONE
        self.server.ended(self)
        self.transport.close()

    def fail(self, why: str) -> None:
        if self.state == _DONE:
            return
        self.state = _DONE
        self.server.stats.protocol_errors += 1
        self.server.ended(self)
        self.transport.abort()

    def crash(self, exc: Exception) -> None:
        if not isinstance(exc, (ProtocolError, ValueError)):
            log_failure(f"fastagi session crashed: {type(exc).__name__}: {exc}", self.server.cfg.log_file)
        self.fail(str(exc))


_LATE = "late"  # the audit wait expired


class FastAGIServer:
    def __init__(self, cfg, listen: tuple[str, int] | None = None, allowed_peers=None):
        self.cfg = cfg
        self.listen = listen or cfg.listen
        self.allowed_peers = tuple(allowed_peers if allowed_peers is not None else cfg.allowed_peers)
        self.deadline = cfg.deadline_ms / 1000
        self.read_timeout = cfg.read_timeout_ms / 1000
        self.audit_wait = cfg.audit_busy_timeout_ms / 1000 + 1.0
        self.max_request = cfg.max_request_bytes
        self.stats = Stats()
        self.generation = 0
        self.port: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sessions: set[_Session] = set()
        self._tls = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._server: asyncio.AbstractServer | None = None
        self._stopping: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.audit: AuditWriter | None = None
        self._refused_logged: set = set()
        self._peer_cache: dict = {}
        self.policy = cfg.policy
        self.answers: dict = {}  # (result, reason) -> what the channel gets (see answer())

    # ---- lookups (in the loop, or in worker threads) -------------------------------
    def _lookup(self, dialed: str, brand: str, caller_id: str = "", callingpres: str = "",
                deadline_at: float | None = None) -> Outcome:
        reader = getattr(self._tls, "reader", None)
        if reader is None:
            reader = self._tls.reader = _RegisterReader(self)
        reader.deadline_at = math.inf if deadline_at is None else deadline_at
        try:
            store = reader.get()
        except Exception:
            store = None  # logged by the reader; check_call answers BLOCK/error
        return check_call(self.cfg, store, dialed, brand, caller_id=caller_id, callingpres=callingpres,
                          policy=self.policy)

    def answer(self, result: str, reason: str) -> tuple:
        """``(result, reason, [SET VARIABLE commands])``: only short words reach the
        AGI stream, anything else is BLOCK/error. Kept per pair: a handful exist."""
        key = (result, reason)
        if not (safe_value(result, RESULT_VALUES) and safe_value(reason)):
            result, reason = "BLOCK", "error"
        answer = (result, reason, [b'SET VARIABLE "RPO_RESULT" "%s"\n' % result.encode(),
                                   b'SET VARIABLE "RPO_REASON" "%s"\n' % reason.encode()])
        if len(self.answers) < 1000:
            self.answers[key] = answer
        return answer

    def _warm(self) -> None:
        """Open the register in every worker and import what a first lookup would."""
        self._lookup("+390000000000", "", "0612345678", "0")
        from . import numbers
        with suppress(Exception):
            numbers.normalize("0612345678", (), "IT")

    def check(self, session: _Session, dialed: str, brand: str, caller_id: str, callingpres: str) -> None:
        """Run the lookup; ``session.checked(outcome)`` follows, by the deadline at the latest."""
        deadline_at = time.monotonic() + self.deadline
        if self._pool is None:  # lookup_threads = 0: in the loop, bounded by SQLite's progress handler
            outcome = self._lookup(dialed, brand, caller_id, callingpres, deadline_at)
            if time.monotonic() > deadline_at and outcome.verdict.reason != "error":
                outcome = self._late()
            session.checked(outcome)
            return
        fut = self.loop.run_in_executor(self._pool, self._lookup, dialed, brand, caller_id, callingpres,
                                        deadline_at)
        timer = self.loop.call_later(self.deadline, lambda: session.state == _CHECK and session.checked(self._late()))

        def done(f):
            timer.cancel()
            if session.state != _CHECK:
                return
            exc = f.exception() if not f.cancelled() else None
            if f.cancelled() or exc is not None:
                from zoneinfo import ZoneInfo
                session.checked(Outcome(error_verdict(f"lookup failed: {exc!r}"), None,
                                        datetime.now(ZoneInfo(self.cfg.timezone))))
            else:
                session.checked(f.result())
        fut.add_done_callback(done)

    def _late(self) -> Outcome:
        self.stats.deadline_exceeded += 1
        from zoneinfo import ZoneInfo
        return Outcome(error_verdict(f"lookup deadline of {self.cfg.deadline_ms} ms exceeded"), None,
                       datetime.now(ZoneInfo(self.cfg.timezone)))

    # ---- sessions -------------------------------------------------------------------
    def _peer_allowed(self, peer) -> bool:
        addr = peer[0] if isinstance(peer, tuple) else peer
        known = self._peer_cache.get(addr)
        if known is None:
            known = self._peer_cache[addr] = self._check_peer(addr)
            if len(self._peer_cache) > 10000:
                self._peer_cache.clear()
        return known

    def _check_peer(self, peer) -> bool:
        try:
            ip = ipaddress.ip_address(peer[0] if isinstance(peer, tuple) else peer)
        except (ValueError, TypeError, IndexError):
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allowed_peers)

    def admit(self, session: _Session, peer) -> bool:
        """Whether a new connection is served: an allowed peer, room for it, not stopping."""
        if not self._peer_allowed(peer):
            self.stats.refused_peers += 1
            addr = peer[0] if isinstance(peer, tuple) else str(peer)
            if addr not in self._refused_logged and len(self._refused_logged) < 1000:
                self._refused_logged.add(addr)
                log_failure(f"fastagi: connection from {addr} refused (not in allowed_peers)", self.cfg.log_file)
            return False
        if len(self.sessions) >= self.cfg.max_connections or self._stopping.is_set():
            self.stats.refused_busy += 1
            return False
        self.sessions.add(session)
        return True

    def ended(self, session: _Session) -> None:
        self.sessions.discard(session)
        if not self.sessions and self._stopping.is_set():
            self._idle.set()

    def _sweep(self) -> None:
        """Enforce every session's deadline; runs a few times per read timeout."""
        now = self.loop.time()
        for session in [s for s in self.sessions if s.expires <= now]:
            try:
                session.expired()
            except Exception as exc:
                session.crash(exc)
        self._sweeper = self.loop.call_later(self._tick, self._sweep)

    # ---- life cycle ---------------------------------------------------------------
    async def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        if self.cfg.lookup_threads:
            self._pool = ThreadPoolExecutor(max_workers=self.cfg.lookup_threads,
                                            thread_name_prefix="rpo-guard-lookup")
            await asyncio.gather(*(loop.run_in_executor(self._pool, self._warm)
                                   for _ in range(self.cfg.lookup_threads)))
        else:
            self._warm()
        from .audit_log import use_json_module
        use_json_module()  # json's C encoder for the rows' hashes: the import is paid once here
        self.audit = AuditWriter(self.cfg, loop)
        self.audit.more_coming = lambda: len(self.sessions) > BATCH_FROM
        self._tick = min(0.1, max(0.005, min(self.read_timeout, self.audit_wait) / 10))
        self._sweeper = loop.call_later(self._tick, self._sweep)
        host, port = self.listen
        self._server = await loop.create_server(lambda: _Session(self), host, port, backlog=1024,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
            if not self.sessions:
                self._idle.set()

    def reopen(self) -> None:
        """SIGHUP: reopen the audit log and the register connections."""
        self.generation += 1
        if self.audit is not None:
            self.audit.reopen()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()
        self._server.close()  # no new connections; the ones in flight go on
        try:
            await asyncio.wait_for(self._idle.wait(), self.cfg.drain_timeout_ms / 1000)
        except TimeoutError:
            pass
        for session in list(self.sessions):
            session.fail("server stopping")
        self.audit.close()  # rows of sessions cut short are written too
        self._sweeper.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


async def serve(cfg, listen=None, ready=None, install_signals: bool = True) -> Stats:
    server = FastAGIServer(cfg, listen)
    await server.start()
    loop = asyncio.get_running_loop()
    if install_signals:
        loop.add_signal_handler(signal.SIGTERM, server.request_stop)
        loop.add_signal_handler(signal.SIGINT, server.request_stop)
        loop.add_signal_handler(signal.SIGHUP, server.reopen)
    host = server.listen[0]
    print(f"rpo-guard serve: listening on {'[' + host + ']' if ':' in host else host}:{server.port} "
          f"(pid {os.getpid()})", file=sys.stderr, flush=True)
    if ready is not None:
        ready(server)
    await server.wait_stopped()
    s = server.stats
    print(f"rpo-guard serve: stopped; sessions={s.sessions} allowed={s.allowed} blocked={s.blocked} "
          f"errors={s.errors} protocol_errors={s.protocol_errors} audit_written={server.audit.written} "
          f"audit_failed={server.audit.failed} audit_commits={server.audit.batches} "
          f"audit_deferred={server.audit.deferred}", file=sys.stderr, flush=True)
    return s


def run_server(cfg, listen=None) -> int:
    if cfg.event_loop == "uvloop":
        try:
            import uvloop  # libuv's loop: about half the CPU per connection of asyncio's own
        except ImportError as exc:
            raise ServeError(f"[fastagi] event_loop = uvloop, but uvloop cannot be imported ({exc}): install "
                             "it (pip install uvloop) or set event_loop = asyncio") from None
        uvloop.run(serve(cfg, listen))
    else:
        asyncio.run(serve(cfg, listen))
    return 0
