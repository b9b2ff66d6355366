"""The FastAGI server: listening, peers, lookups in the loop or in threads, stats, signals.

The design is described in :mod:`rpo_guard.fastagi`; a call's own protocol is
in :mod:`.session`, the register connection in :mod:`.reader`, the audit group
commit in :mod:`.writer` and its checkpoints in :mod:`.checkpoint`.
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
from zoneinfo import ZoneInfo

from rpo_guard.failure_log import log_failure
from rpo_guard.guard import RESULT_VALUES, Outcome, check_call, safe_value
from rpo_guard.rules.decision import error_verdict

from .attempts import InFlight
from .reader import RegisterReader
from .session import CHECKING, Session
from .sdnotify import Notifier
from .writer import BATCH_FROM, AuditWriter


class ServeError(Exception):
    """The server cannot start as configured."""


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
        self.sessions: set[Session] = set()
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
        # [brand NAME] policies, made once; a brand without a section gets self.policy
        self.policies = {name: cfg.policy_for(name) for name in (cfg.brands or {})}
        capped = any(p.attempt_caps for p in (self.policy, *self.policies.values()))
        self.inflight = InFlight() if capped else None  # allowed attempts not yet committed
        self.answers: dict = {}  # (result, reason) -> what the channel gets (see answer())

    # ---- lookups (in the loop, or in worker threads) -------------------------------
    def _lookup(self, dialed: str, brand: str, caller_id: str = "", callingpres: str = "",
                deadline_at: float | None = None) -> Outcome:
        reader = getattr(self._tls, "reader", None)
        if reader is None:
            reader = self._tls.reader = RegisterReader(self)
        reader.deadline_at = math.inf if deadline_at is None else deadline_at
        try:
            store = reader.get()
        except Exception:
            store = None  # logged by the reader; check_call answers BLOCK/error
        policy = self.policies.get(brand.strip(), self.policy) if self.policies else self.policy
        attempts = reader.attempts() if policy.attempt_caps else None
        return check_call(self.cfg, store, dialed, brand, caller_id=caller_id, callingpres=callingpres,
                          policy=policy, attempts=attempts)

    def release(self, outcome: Outcome) -> None:
        """An outcome that will not be recorded gives back its reserved attempt."""
        if outcome.held is not None and self.inflight is not None:
            self.inflight.release_now(outcome.held)

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
        from rpo_guard.rules import numbers
        with suppress(Exception):
            numbers.normalize("0612345678", (), "IT")

    def check(self, session: Session, dialed: str, brand: str, caller_id: str, callingpres: str) -> None:
        """Run the lookup; ``session.checked(outcome)`` follows, by the deadline at the latest."""
        deadline_at = time.monotonic() + self.deadline
        if self._pool is None:  # lookup_threads = 0: in the loop, bounded by SQLite's progress handler
            outcome = self._lookup(dialed, brand, caller_id, callingpres, deadline_at)
            if time.monotonic() > deadline_at and outcome.verdict.reason != "error":
                self.release(outcome)
                outcome = self._late()
            session.checked(outcome)
            return
        fut = self.loop.run_in_executor(self._pool, self._lookup, dialed, brand, caller_id, callingpres,
                                        deadline_at)
        timer = self.loop.call_later(self.deadline, lambda: session.state == CHECKING and session.checked(self._late()))

        def done(f):
            timer.cancel()
            if session.state != CHECKING:
                if not f.cancelled() and f.exception() is None:
                    self.release(f.result())  # answered by the deadline: this outcome is not recorded
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

    def admit(self, session: Session, peer) -> bool:
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

    def ended(self, session: Session) -> None:
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
        if self.inflight is not None:
            # lookup threads count attempts on read-only connections to audit.db: make it exist
            from rpo_guard.audit.log import AuditLog
            AuditLog(self.cfg.audit_db, self.cfg.audit_busy_timeout_ms, self.cfg.file_mode,
                     synchronous=self.cfg.synchronous, group=self.cfg.group).close()
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        if self.cfg.lookup_threads:
            self._pool = ThreadPoolExecutor(max_workers=self.cfg.lookup_threads,
                                            thread_name_prefix="rpo-guard-lookup")
            await asyncio.gather(*(loop.run_in_executor(self._pool, self._warm)
                                   for _ in range(self.cfg.lookup_threads)))
        else:
            self._warm()
        from rpo_guard.audit.log import use_json_module
        use_json_module()  # json's C encoder for the rows' hashes: the import is paid once here
        self.audit = AuditWriter(self.cfg, loop, self.inflight)
        self.audit.more_coming = lambda: len(self.sessions) > BATCH_FROM
        self._tick = min(0.1, max(0.005, min(self.read_timeout, self.audit_wait) / 10))
        self._sweeper = loop.call_later(self._tick, self._sweep)
        host, port = self.listen
        self._server = await loop.create_server(lambda: Session(self), host, port, backlog=1024,
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
    notifier = Notifier()
    notifier.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=listening on port {server.port}")
    pinger = None

    def ping():  # from the event loop: a stuck loop sends no more pings, and systemd restarts us
        nonlocal pinger
        notifier.notify("WATCHDOG=1")
        pinger = loop.call_later(notifier.ping_every, ping)
    if notifier.ping_every:
        ping()
    if ready is not None:
        ready(server)
    await server._stopping.wait()
    notifier.notify("STOPPING=1\nSTATUS=draining the calls in flight")
    await server.wait_stopped()
    if pinger is not None:
        pinger.cancel()
    notifier.close()
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
