"""The process AGI: ``rpo-guard-agi [--config PATH] NUMBER [BRAND [CALLERID]]``.

The caller ID checked is ``agi_callerid`` (CALLERID(num)) unless the third
argument gives the number the call will present; ``agi_callingpres`` showing
a restricted presentation makes it hidden either way (rpo_guard.rules.callerid).

Asterisk starts it once per call (``AGI(${RPO_GUARD_AGI},${NUMBER},${BRAND})``).
It reads the environment block through pyst2, decides, records the attempt in
the audit log, then sets ``RPO_RESULT`` (ALLOW or BLOCK), ``RPO_REASON`` (the
reason code) and ``RPO_AUDIT_ID`` on the channel and exits 0.

Hangup: Asterisk sends SIGHUP when the caller hangs up (unless
``AGISIGHUP=no``). Python's default action for SIGHUP kills the process, and
Python needs tens of milliseconds to start: the installed ``rpo-guard-agi``
is a /bin/sh program (scripts/rpo-guard-agi) that ignores SIGHUP before it
starts ``python -m rpo_guard.agi``, and this module installs its own handler
first thing, before any other import. So only the shell's first instruction
(well under a millisecond) is exposed, and the shipped dialplan's
``AGISIGHUP=no`` closes even that. After a
hangup the channel is dead, but SET VARIABLE still works there (transcript
03; 17 lists what a dead channel permits), so the script carries on: it
records the attempt and still sets the variables for the ``h`` extension.

Failures: any of them (config, database, exception) answers BLOCK/error while
the AGI stream works; when the stream itself is broken the exit status is
non-zero, which Asterisk reports as AGISTATUS=FAILURE and the shipped
dialplan treats as a block.
"""
import signal

_hangup = []
signal.signal(signal.SIGHUP, lambda signum, frame: _hangup.append(signum))

import io  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from .guard import RESULT_VALUES, safe_value  # noqa: E402,F401  (shared with the FastAGI server)


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    config, rest = None, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            config = argv[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            config = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return config, rest


def _make_agi():
    from asterisk.agi import AGI

    class GuardAGI(AGI):
        """pyst2's AGI, told not to give up after a hangup.

        pyst2 raises before every command once SIGHUP arrived; SET VARIABLE
        is allowed on a dead channel, and the ``h`` extension reads what we
        set, so we keep talking. A broken pipe still ends the session.
        """

        def test_hangup(self):
            if self._got_sighup:
                _hangup.append(signal.SIGHUP)

    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="\n")
    stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", errors="strict", write_through=True)
    return GuardAGI(stdin=stdin, stdout=stdout, stderr=open(os.devnull, "w"))


def _tell_asterisk(agi, message: str) -> None:
    """A line in Asterisk's own log (VERBOSE, level 1): where an admin looks first when
    there is no configuration saying where failures go. Only characters that cannot break
    the command line are kept (ASCII letters, digits and a few signs; no quote, backslash
    or newline)."""
    text = "".join(c if (c.isascii() and c.isalnum()) or c in " _-.,:;/=()'[]+@" else "?" for c in message)[:400]
    try:
        agi.verbose(text, 1)
    except Exception:
        pass


def run(argv: list[str]) -> int:
    started = time.perf_counter()
    config_path, args = parse_args(argv)
    dialed = args[0] if args else ""
    brand = args[1] if len(args) > 1 else ""
    callerid_arg = args[2] if len(args) > 2 else None

    from .failure_log import log_failure

    try:
        agi = _make_agi()
    except Exception as exc:
        log_failure(f"AGI environment unreadable: {type(exc).__name__}: {exc}")
        return 1
    env = agi.env

    from . import config as config_mod
    from rpo_guard.rules.decision import error_verdict
    from .guard import Outcome, audit_row, check_call

    # `rpo-guard simulate-call` marks its calls: "1", or the ISO moment to decide as of.
    simulated = os.environ.get("RPO_GUARD_SIMULATE", "")
    simulated_at = None
    if simulated not in ("", "1"):
        from datetime import datetime
        simulated_at = datetime.fromisoformat(simulated)  # a bad value crashes: AGISTATUS=FAILURE, blocked
        if simulated_at.tzinfo is None:
            raise ValueError(f"RPO_GUARD_SIMULATE={simulated!r} has no offset")

    cfg = None
    try:
        cfg = config_mod.load(config_path, skip=("fastagi", "sync", "vicidial"))
    except Exception as exc:
        log_failure(f"configuration: {exc}")
        _tell_asterisk(agi, f"rpo-guard: call refused, configuration unusable: {exc}")
    log_file = cfg.log_file if cfg else None

    log = attempts = policy = None
    if cfg is not None:
        policy = cfg.policy_for(brand)
        if policy.attempt_caps:
            # The attempts are counted on the connection the row is then appended with
            # (it creates audit.db when missing), under its write lock, which the append
            # commits; without it the cap refuses (BLOCK/error).
            try:
                log = _open_audit(cfg)
                from rpo_guard.audit.attempts import AttemptCounter
                attempts = AttemptCounter(log.conn, lock=log.write_lock())
            except Exception as exc:
                log_failure(f"audit log {cfg.audit_db} (attempt caps): {type(exc).__name__}: {exc}", log_file)

    if cfg is None:
        from datetime import datetime, timezone
        outcome = Outcome(error_verdict("configuration unusable"), None, datetime.now(timezone.utc))
    else:
        store = None
        try:
            from rpo_guard.register.store import Store
            store = Store(cfg.register_db, cfg.busy_timeout_ms)
        except Exception as exc:
            log_failure(f"register database {cfg.register_db}: {type(exc).__name__}: {exc}", log_file)
        caller_id = callerid_arg if callerid_arg is not None else env.get("agi_callerid", "")
        outcome = check_call(cfg, store, dialed, brand, simulated_at, caller_id=caller_id,
                             callingpres=env.get("agi_callingpres", ""), policy=policy, attempts=attempts)
        if store is not None:
            store.close()
    verdict = outcome.verdict
    if verdict.reason == "error":
        log_failure(f"call {env.get('agi_uniqueid', '?')} to {dialed!r} blocked on error: {verdict.detail}", log_file)

    row = audit_row(outcome, env, dialed, brand, callerid_arg, started, "simulate" if simulated else "agi")
    if simulated_at is not None and cfg is not None:  # the row keeps the real time; the detail says when
        from datetime import datetime
        from zoneinfo import ZoneInfo
        row["at"] = datetime.now(ZoneInfo(cfg.timezone)).isoformat(timespec="milliseconds")
        row["detail"] = f"{row['detail'] or ''} [simulated as of {simulated_at.isoformat()}]".strip()
    result, reason, audit_id = verdict.decision, verdict.reason, ""
    try:
        if cfg is None:
            raise RuntimeError("no configuration, no audit log")
        if log is None:
            log = _open_audit(cfg)
        try:
            audit_id = str(log.append(row))
        finally:
            log.close()
    except Exception as exc:
        # An attempt that cannot be recorded is refused; the failure log keeps it.
        result, reason = "BLOCK", "error"
        cause = f"{type(exc).__name__}: {exc}"
        if cfg is not None:
            from .perms import access_denied
            cause = access_denied(cfg.audit_db, write=True) or cause
        log_failure(f"audit log unwritable ({cause}); attempt: {row!r}", log_file)

    if not (safe_value(result, RESULT_VALUES) and safe_value(reason)):
        result, reason = "BLOCK", "error"
    try:
        agi.set_variable("RPO_RESULT", result)
        agi.set_variable("RPO_REASON", reason)
        if safe_value(audit_id):
            agi.set_variable("RPO_AUDIT_ID", audit_id)
    except Exception as exc:
        if _hangup:
            return 0  # the caller is gone: nothing will dial
        log_failure(f"AGI stream broken while answering {result}/{reason}: {type(exc).__name__}: {exc}", log_file)
        return 1
    return 0


def _open_audit(cfg):
    from rpo_guard.audit.log import AuditLog
    return AuditLog(cfg.audit_db, cfg.audit_busy_timeout_ms, cfg.file_mode, synchronous=cfg.synchronous,
                    group=cfg.group)


USAGE = """usage: rpo-guard-agi [--config=PATH] NUMBER [BRAND [CALLERID]]

The process AGI of rpo_guard: Asterisk runs it once per outbound call,
  AGI(${RPO_GUARD_AGI},${NUMBER},${BRAND})
and it answers on the AGI stream (standard input and output) by setting
RPO_RESULT (ALLOW or BLOCK), RPO_REASON and RPO_AUDIT_ID. The configuration is
--config=PATH, else $RPO_GUARD_CONFIG, else /etc/rpo-guard/rpo-guard.conf.
It does not run from a terminal; to try a number as Asterisk would:
  rpo-guard simulate-call NUMBER --brand BRAND --caller-id CALLERID
Guide: docs/dialplan.md.
"""


def main() -> None:
    if sys.argv[1:2] in (["--help"], ["-h"]):
        sys.stdout.write(USAGE)
        sys.exit(0)
    if os.isatty(0):  # a person at a terminal, not Asterisk: no AGI talk to them
        sys.stderr.write(USAGE)
        sys.exit(2)
    try:
        code = run(sys.argv[1:])
    except BaseException as exc:  # never a traceback to Asterisk
        try:
            from .failure_log import log_failure
            log_failure(f"AGI crashed: {type(exc).__name__}: {exc}")
        finally:
            code = 1
    # Python's shutdown puts back the default action of every signal it handled, and the
    # default for SIGHUP is to die: a hangup in the last milliseconds would turn an
    # answered, recorded call's exit status into "killed by SIGHUP". Ignored from here on.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    main()
