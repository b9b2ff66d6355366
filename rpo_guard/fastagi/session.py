"""One FastAGI call: the environment block, the check, the audit row, the answer (an asyncio.Protocol)."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from rpo_guard.failure_log import log_failure
from rpo_guard.guard import Outcome, audit_row

if TYPE_CHECKING:
    from .server import FastAGIServer


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


_LATE = "late"  # the audit wait expired


# Session states, in order.
READING_ENV, CHECKING, AUDITING, ANSWERING, DRAINING, DONE = range(6)


class Session(asyncio.Protocol):
    """One FastAGI call: a state machine the event loop drives.

    ``READING_ENV``      reading the environment block (bounded in time and size);
    ``CHECKING``    the lookup runs (in the loop, or in a worker thread);
    ``AUDITING``    the row is queued on the :class:`AuditWriter`;
    ``ANSWERING`` one ``SET VARIABLE`` at a time, each after the previous response;
    ``DRAINING``    half-closed; Asterisk's trailing ``HANGUP`` and EOF are read;
    ``DONE``     closed (answered, refused or dropped).

    Every waiting state has a deadline (``expires``, on the loop clock) that
    the server's sweeper enforces; one float per session instead of a timer
    per read. Bytes that arrive before our first command (an inline
    ``HANGUP``) are kept for the response reader.
    """

    def __init__(self, server: "FastAGIServer"):
        self.server = server
        self.transport = None
        self.state = DONE  # until connection_made accepts the peer
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
        self.state = READING_ENV
        self.expires = srv.loop.time() + srv.read_timeout

    def data_received(self, data: bytes) -> None:
        try:
            state = self.state
            if state == DRAINING or state == DONE:
                return  # after our EOF only Asterisk's HANGUP comes: dropped
            buf = self.buf + data if self.buf else data
            limit = self.server.max_request
            if state == READING_ENV:
                end = buf.find(b"\n\n")
                if end < 0 or end + 2 > limit:
                    if end >= 0 or len(buf) > limit:
                        self.fail("environment block longer than max_request_bytes")
                    else:
                        self.buf = buf
                    return
                self.buf = buf[end + 2:]
                self.begin(buf[:end + 2])
            elif state == ANSWERING:
                self.buf = buf
                self.read_responses()
            elif len(buf) > limit:
                self.fail("more than max_request_bytes before the first command")
            else:
                self.buf = buf  # an inline HANGUP before our first command: read with the responses
        except Exception as exc:  # never the server
            self.crash(exc)

    def eof_received(self):
        if self.state == DRAINING:
            self.finish()
            return False
        if self.state in (CHECKING, AUDITING):
            # Asterisk hung up after sending the request: the attempt is still checked
            # and recorded; sending the answer then fails (a protocol error, as before).
            self.peer_eof = True
            return True
        self.fail("the peer closed the connection before the session ended")
        return False

    def connection_lost(self, exc) -> None:
        if self.state in (CHECKING, AUDITING):
            self.peer_eof = True  # the row is still written when the check completes
            return
        if self.state != DONE:
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
        self.state = CHECKING
        self.request = (env, dialed, brand, callerid_arg, started)
        # the lookup answers by its deadline; this is only a backstop if that answer never comes
        self.expires = srv.loop.time() + srv.deadline + srv.read_timeout
        # as the process AGI: the third argument, else CALLERID(num), is the number presented
        caller_id = callerid_arg if callerid_arg is not None else env.get("agi_callerid", "")
        srv.check(self, dialed, brand, caller_id, env.get("agi_callingpres", ""))

    def checked(self, outcome: Outcome) -> None:
        """The lookup's answer (from the loop, a worker thread's future, or the deadline)."""
        if self.state != CHECKING:
            return  # the deadline answered first
        srv = self.server
        env, dialed, brand, callerid_arg, started = self.request
        self.verdict = verdict = outcome.verdict
        if verdict.reason == "error":
            log_failure(f"call {env.get('agi_uniqueid', '?')} to {dialed!r} blocked on error: {verdict.detail}",
                        srv.cfg.log_file)
        self.state = AUDITING
        # Bounded by the audit log's own lock timeout plus a margin, not by the lookup
        # deadline: an answer given before the commit could contradict the row written.
        self.expires = srv.loop.time() + srv.audit_wait
        # `rpo-guard simulate-call --fastagi` asks for agi://HOST:PORT/rpo_guard?simulate=1
        simulated = "simulate=1" in env.get("agi_network_script", "").partition("?")[2].split("&")
        srv.audit.submit(audit_row(outcome, env, dialed, brand, callerid_arg, started,
                                   "simulate" if simulated else "fastagi"), self.audited, outcome.held)

    def audited(self, audit_id, error) -> None:
        if self.state != AUDITING:
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
        self.state = ANSWERING
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
            self.state = DRAINING
            self.buf = b""
            self.expires = self.server.loop.time() + self.server.read_timeout
            if self.transport.can_write_eof():
                self.transport.write_eof()
            return
        self.buf = buf

    def expired(self) -> None:
        """The sweeper found this session past its deadline."""
        if self.state == AUDITING:
            self.audited(None, _LATE)
        elif self.state == CHECKING:
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
        self.state = DONE
        self.server.ended(self)
        self.transport.close()

    def fail(self, why: str) -> None:
        if self.state == DONE:
            return
        self.state = DONE
        self.server.stats.protocol_errors += 1
        self.server.ended(self)
        self.transport.abort()

    def crash(self, exc: Exception) -> None:
        if not isinstance(exc, (ProtocolError, ValueError)):
            log_failure(f"fastagi session crashed: {type(exc).__name__}: {exc}", self.server.cfg.log_file)
        self.fail(str(exc))

