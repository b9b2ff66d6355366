"""The FastAGI server: ``rpo-guard serve [--listen HOST:PORT]``.

Asterisk connects for each call (``AGI(agi://127.0.0.1:4573/rpo_guard,NUMBER,BRAND)``),
sends the environment block (``agi_network: yes``, ``agi_network_script``
with any query string, ``agi_arg_N``, then an empty line) and answers our
commands one at a time. The session is the process AGI's, on the same code:
:func:`rpo_guard.guard.check_call` decides, :func:`rpo_guard.guard.audit_row`
builds the audit row, and the channel gets ``RPO_RESULT``, ``RPO_REASON`` and
``RPO_AUDIT_ID`` with the same ``SET VARIABLE "NAME" "VALUE"`` bytes pyst2 sends.

Design (asyncio, one event loop thread):

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
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from .decision import error_verdict
from .failure_log import log_failure
from .guard import RESULT_VALUES, Outcome, audit_row, check_call, safe_value


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


class _RegisterReader:
    """One worker thread's register connection; follows a replaced file."""

    def __init__(self, server: "FastAGIServer"):
        self.server = server
        self.store = None
        self.ident = None
        self.generation = -1
        self.last_error = ""

    def get(self):
        from .store import Store, StoreError

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
            try:
                old.close()
            except Exception:
                pass
        return new


class AuditWriter:
    """Group commit of audit rows, in the event loop.

    A session queues its row and waits. One flush per loop iteration writes
    every row queued so far in one ``AuditLog.append_many`` transaction and
    hands each session its row id; rows that arrive while a commit runs go
    into the next one, so batches grow with the load. Measured against a
    writer thread (whole batches handed over, one commit in flight): 10-20 %
    less CPU per call and lower latency, the GIL hand-offs costing more than
    the loop time the commit takes. A disk that stalls stalls every session
    either way, since each one waits for its own row.
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

    def submit(self, row: dict) -> asyncio.Future:
        fut = self.loop.create_future()
        self._pending.append((row, fut))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)
        return fut

    def reopen(self) -> None:
        self._reopen = True

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        ids, error = self._write([row for row, _ in batch])
        for i, (_, fut) in enumerate(batch):
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(RuntimeError(error))
            else:
                fut.set_result(ids[i])

    async def close(self) -> None:
        """Write every row queued so far, then close the log."""
        self.flush()
        if self._log is not None:
            self._log.close()
            self._log = None

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
            ids = self._log.append_many(rows)
        except Exception as exc:
            self.failed += len(rows)
            for row in rows:  # an attempt that cannot be recorded is kept in the failure log
                log_failure(f"audit log unwritable ({type(exc).__name__}: {exc}); attempt: {row!r}",
                            self.cfg.log_file)
            if self._log is not None:
                try:
                    self._log.close()
                except Exception:
                    pass
                self._log = None
            return None, f"{type(exc).__name__}: {exc}"
        self.written += len(rows)
        self.batches += 1
        return ids, None


class FastAGIServer:
    def __init__(self, cfg, listen: tuple[str, int] | None = None, allowed_peers=None):
        self.cfg = cfg
        self.listen = listen or cfg.listen
        self.allowed_peers = tuple(allowed_peers if allowed_peers is not None else cfg.allowed_peers)
        self.deadline = cfg.deadline_ms / 1000
        self.read_timeout = cfg.read_timeout_ms / 1000
        self.audit_wait = cfg.audit_busy_timeout_ms / 1000 + 1.0
        self.stats = Stats()
        self.generation = 0
        self.port: int | None = None
        self._sessions: set[asyncio.Task] = set()
        self._tls = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._server: asyncio.AbstractServer | None = None
        self._stopping: asyncio.Event | None = None
        self.audit: AuditWriter | None = None
        self._refused_logged: set = set()
        self._peer_cache: dict = {}

    # ---- lookups (in the loop, or in worker threads) -------------------------------
    def _lookup(self, dialed: str, brand: str, caller_id: str = "", callingpres: str = "",
                deadline_at: float | None = None) -> Outcome:
        reader = getattr(self._tls, "reader", None)
        if reader is None:
            reader = self._tls.reader = _RegisterReader(self)
        try:
            store = reader.get()
        except Exception:
            store = None  # logged by the reader; check_call answers BLOCK/error
        if store is not None and deadline_at is not None:
            # SQLite itself gives up (OperationalError: interrupted) once the deadline is past
            store.conn.set_progress_handler(lambda: time.monotonic() > deadline_at, 2000)
        return check_call(self.cfg, store, dialed, brand, caller_id=caller_id, callingpres=callingpres)

    def _warm(self) -> None:
        """Open the register in every worker and import what a first lookup would."""
        self._lookup("+390000000000", "", "0612345678", "0")
        from . import numbers
        try:
            numbers.normalize("0612345678", (), "IT")
        except Exception:
            pass

    async def check(self, dialed: str, brand: str, caller_id: str = "", callingpres: str = "") -> Outcome:
        deadline_at = time.monotonic() + self.deadline
        if self._pool is None:  # lookup_threads = 0: in the loop, bounded by SQLite's progress handler
            outcome = self._lookup(dialed, brand, caller_id, callingpres, deadline_at)
            if time.monotonic() <= deadline_at or outcome.verdict.reason == "error":
                return outcome
            return self._late()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, self._lookup, dialed, brand, caller_id, callingpres, deadline_at)
        try:
            async with asyncio.timeout(self.deadline):
                return await fut
        except TimeoutError:
            return self._late()

    def _late(self) -> Outcome:
        self.stats.deadline_exceeded += 1
        from zoneinfo import ZoneInfo
        return Outcome(error_verdict(f"lookup deadline of {self.cfg.deadline_ms} ms exceeded"), None,
                       datetime.now(ZoneInfo(self.cfg.timezone)))

    # ---- one session --------------------------------------------------------------
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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not self._peer_allowed(peer):
            self.stats.refused_peers += 1
            addr = peer[0] if isinstance(peer, tuple) else str(peer)
            if addr not in self._refused_logged and len(self._refused_logged) < 1000:
                self._refused_logged.add(addr)
                log_failure(f"fastagi: connection from {addr} refused (not in allowed_peers)", self.cfg.log_file)
            writer.transport.abort()
            return
        if len(self._sessions) >= self.cfg.max_connections or self._stopping.is_set():
            self.stats.refused_busy += 1
            writer.transport.abort()
            return
        task = asyncio.current_task()
        self._sessions.add(task)
        try:
            await self._session(reader, writer)
        except (ProtocolError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError, ConnectionError, OSError):
            self.stats.protocol_errors += 1
            writer.transport.abort()
        except Exception as exc:  # never the server
            self.stats.protocol_errors += 1
            log_failure(f"fastagi session crashed: {type(exc).__name__}: {exc}", self.cfg.log_file)
            writer.transport.abort()
        else:
            writer.close()
        finally:
            self._sessions.discard(task)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(self.read_timeout):
            block = await reader.readuntil(b"\n\n")
        started = time.perf_counter()
        env = parse_env(block)
        args = agi_args(env)
        dialed = args[0] if args else ""
        brand = args[1] if len(args) > 1 else ""
        callerid_arg = args[2] if len(args) > 2 else None
        self.stats.sessions += 1

        # as the process AGI: the third argument, else CALLERID(num), is the number presented
        caller_id = callerid_arg if callerid_arg is not None else env.get("agi_callerid", "")
        outcome = await self.check(dialed, brand, caller_id, env.get("agi_callingpres", ""))
        verdict = outcome.verdict
        if verdict.reason == "error":
            log_failure(f"call {env.get('agi_uniqueid', '?')} to {dialed!r} blocked on error: {verdict.detail}",
                        self.cfg.log_file)
        row = audit_row(outcome, env, dialed, brand, callerid_arg, started, "fastagi")
        result, reason, audit_id = verdict.decision, verdict.reason, ""
        try:
            # Bounded by the audit log's own lock timeout plus a margin, not by the lookup
            # deadline: an answer given before the commit could contradict the row written.
            async with asyncio.timeout(self.audit_wait):
                audit_id = str(await self.audit.submit(row))
        except Exception as exc:
            # Not recorded: refused. The writer keeps failed rows in the failure log.
            result, reason = "BLOCK", "error"
            late = isinstance(exc, TimeoutError)
            log_failure(f"call {env.get('agi_uniqueid', '?')} refused: audit row "
                        + (f"not committed after {self.audit_wait:g} s (it may still be written with "
                           f"decision {verdict.decision})" if late else f"not written ({type(exc).__name__}: {exc})"),
                        self.cfg.log_file)
        if not (safe_value(result, RESULT_VALUES) and safe_value(reason)):
            result, reason = "BLOCK", "error"
        if reason == "error":
            self.stats.errors += 1
        if result == "ALLOW":
            self.stats.allowed += 1
        else:
            self.stats.blocked += 1
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1

        state = {"hangup": False}
        commands = [("RPO_RESULT", result), ("RPO_REASON", reason)]
        if safe_value(audit_id):
            commands.append(("RPO_AUDIT_ID", audit_id))
        for name, value in commands:
            writer.write(f'SET VARIABLE "{name}" "{value}"\n'.encode())
            async with asyncio.timeout(self.read_timeout):
                await self._response(reader, state)
        if state["hangup"]:
            self.stats.hangups_seen += 1
        # Done: half-close; Asterisk answers with HANGUP and closes its side.
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(self.read_timeout):
            while await reader.read(4096):
                pass

    async def _response(self, reader: asyncio.StreamReader, state: dict) -> str:
        """The response to the command just sent, skipping inline HANGUP lines."""
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionError("the peer closed the connection before answering")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if text == "HANGUP":
                state["hangup"] = True
                continue
            if text.startswith("520-"):  # multi-line usage block: read to its end
                while not text.startswith("520 "):
                    line = await reader.readline()
                    if not line.endswith(b"\n"):
                        raise ConnectionError("the peer closed the connection inside a 520 block")
                    text = line.decode("utf-8", "replace").rstrip("\r\n")
            return text

    # ---- life cycle ---------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self.cfg.lookup_threads:
            self._pool = ThreadPoolExecutor(max_workers=self.cfg.lookup_threads,
                                            thread_name_prefix="rpo-guard-lookup")
            await asyncio.gather(*(loop.run_in_executor(self._pool, self._warm)
                                   for _ in range(self.cfg.lookup_threads)))
        else:
            self._warm()
        self.audit = AuditWriter(self.cfg, loop)
        host, port = self.listen
        self._server = await asyncio.start_server(self._handle, host, port, limit=self.cfg.max_request_bytes,
                                                  backlog=1024, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def reopen(self) -> None:
        """SIGHUP: reopen the audit log and the register connections."""
        self.generation += 1
        if self.audit is not None:
            self.audit.reopen()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()
        self._server.close()  # no new connections; the ones in flight go on
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=self.cfg.drain_timeout_ms / 1000)
        for task in list(self._sessions):
            task.cancel()
        await self.audit.close()
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
          f"audit_failed={server.audit.failed}", file=sys.stderr, flush=True)
    return s


def run_server(cfg, listen=None) -> int:
    asyncio.run(serve(cfg, listen))
    return 0
