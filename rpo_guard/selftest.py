"""``rpo-guard selftest``: the guard checked end to end in the running Asterisk of this box.

Through Asterisk's control socket (``asterisk [-C asterisk.conf] -rx ...``):

1. Asterisk answers;
2. the shipped subroutines are loaded (``rpo-guard-check``, ``rpo-guard-check-fastagi``);
3. their global names an executable AGI (``RPO_GUARD_AGI``) or a FastAGI server that accepts
   connections (``RPO_GUARD_FASTAGI``);
4. test calls go through each loaded subroutine on Local channels that never reach a trunk:
   the selftest adds its own contexts (``dialplan add extension``; removed at the end), and
   its sink context stands in for the trunk. One call must be refused (an invalid number),
   one forced failure must be refused (the AGI or server pointed at nowhere for that call
   only), one must be let through to the sink (a number the register allows now, found with
   the same decision code; none: a warning).

The audit rows of the test calls are marked: their ``via`` ends in ``-selftest`` (the AGI
sees the selftest's context in the channel name), and the auditor's summary and report leave
them out. Each check gives OK, WARNING or FAILURE; the exit status is 0, 1 or 2, as
``rpo-guard status``'s.
"""
from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import time
import uuid
from dataclasses import dataclass

OK, WARNING, FAILURE = "OK", "WARNING", "FAILURE"
LEVELS = {OK: 0, WARNING: 1, FAILURE: 2}
CONTEXT = "rpo-guard-selftest"          # a channel in it is a self-test call (guard.audit_row)
SINK = "rpo-guard-selftest-sink"
RECORD = "rpo-guard-selftest-record"
FAMILY = "rpo_guard_selftest"
DEFAULT_AGI = "/usr/local/bin/rpo-guard-agi"
DEFAULT_FASTAGI = "agi://127.0.0.1:4573/rpo_guard"
SUBROUTINES = {"agi": "rpo-guard-check", "fastagi": "rpo-guard-check-fastagi"}
NOWHERE = {"agi": ("RPO_GUARD_AGI", "/nonexistent/rpo-guard-selftest-forced-failure"),
           "fastagi": ("RPO_GUARD_FASTAGI", "agi://127.0.0.1:1/rpo_guard")}
REFUSED_NUMBER = "0000"  # not a phone number: refused whatever the register holds (invalid_number)


@dataclass
class Check:
    name: str
    level: str
    detail: str


class SelftestError(Exception):
    pass


class AsteriskCLI:
    def __init__(self, binary: str = "asterisk", conf: str | None = None, timeout: float = 20):
        self.args = [binary] + (["-C", conf] if conf else [])
        self.timeout = timeout

    def rx(self, command: str) -> str:
        try:
            r = subprocess.run(self.args + ["-rx", command], capture_output=True, text=True,
                               timeout=self.timeout, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SelftestError(f"{' '.join(self.args)} -rx {command!r}: {exc}") from None
        if r.returncode != 0:
            raise SelftestError(f"{' '.join(self.args)} -rx {command!r} failed ({r.returncode}): "
                                f"{(r.stdout + r.stderr).strip()[:300]}")
        return r.stdout


def quote(value: str) -> str:
    """One argument of an Asterisk CLI command line."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def globals_of(cli: AsteriskCLI) -> dict[str, str]:
    found = {}
    for line in cli.rx("dialplan show globals").splitlines():
        m = re.match(r"\s*([A-Za-z0-9_]+)=(.*)$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def loaded(cli: AsteriskCLI, context: str) -> bool:
    try:
        out = cli.rx(f"dialplan show {context}")
    except SelftestError:
        return False
    return f"Context '{context}'" in out and "AGI(" in out


def fastagi_reachable(url: str, timeout: float = 3) -> tuple[bool, str]:
    m = re.match(r"agi://(\[[^\]]+\]|[^:/]+)(?::(\d+))?(/.*)?$", url)
    if not m:
        return False, f"{url!r} is not an agi:// URL"
    host, port = m.group(1).strip("[]"), int(m.group(2) or 4573)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True, f"{host}:{port} accepts connections"
    except OSError as exc:
        return False, f"{host}:{port}: {exc}"


# The selftest's own contexts: the entry (per-call settings from astdb), the hangup handler
# that records the outcome, the sink. Priorities are numbered: `dialplan add extension`
# takes no labels.
def _contexts() -> list[tuple[str, str, int, str]]:
    db = f"{FAMILY}/${{ST_ID}}"
    entry = [
        "Set(__ST_ID=${EXTEN})",
        f"Set(CHANNEL(hangup_handler_push)={RECORD},s,1)",
        f'GotoIf($["${{DB_EXISTS({db}/agi)}}" != "1"]?5)',
        "Set(RPO_GUARD_AGI=${DB_RESULT})",
        f'GotoIf($["${{DB_EXISTS({db}/fastagi)}}" != "1"]?7)',
        "Set(RPO_GUARD_FASTAGI=${DB_RESULT})",
        f"Set(CALLERID(num)=${{DB({db}/callerid)}})",
        f"Set(ST_NUMBER=${{DB({db}/number)}})",
        f"Gosub(${{DB({db}/sub)}},s,1(${{ST_NUMBER}},${{DB({db}/brand)}}))",
        'GotoIf($["${RPO_RESULT}" = "ALLOW"]?12)',
        "Hangup(21)",
        f"Dial(Local/${{ST_NUMBER}}@{SINK})",
        "Hangup()",
    ]
    record = [f"Set(DB({db}/{name})=${{{name}}})" for name in ("RPO_RESULT", "RPO_REASON", "RPO_AUDIT_ID",
                                                                  "AGISTATUS")]
    record += [f"Set(DB({db}/done)=1)", "Return()"]
    sink = [f"Set(DB({db}/sink)=${{EXTEN}})", "Answer()", "Hangup()"]
    rows = [(CONTEXT, "_X.", i + 1, app) for i, app in enumerate(entry)]
    rows += [(RECORD, "s", i + 1, app) for i, app in enumerate(record)]
    rows += [(SINK, pattern, i + 1, app) for pattern in ("_X.", "_+X.") for i, app in enumerate(sink)]
    return rows


class Selftest:
    def __init__(self, cfg, cli: AsteriskCLI, brand: str = "", caller_id: str = "0612340000",
                 number: str | None = None, timeout: float = 20):
        self.cfg, self.cli, self.brand, self.caller_id = cfg, cli, brand, caller_id
        self.number, self.timeout = number, timeout
        self.checks: list[Check] = []
        self.run_id = str(int(uuid.uuid4().int % 10 ** 8)).zfill(8)
        self._calls = 0

    def add(self, name: str, level: str, detail: str) -> Check:
        c = Check(name, level, detail)
        self.checks.append(c)
        return c

    # ---- the steps -------------------------------------------------------------------
    def run(self) -> list[Check]:
        try:
            version = self.cli.rx("core show version").strip()
        except SelftestError as exc:
            self.add("asterisk", FAILURE, f"Asterisk's control socket does not answer: {exc}")
            return self.checks
        self.add("asterisk", OK, version.splitlines()[0] if version else "answers")
        fronts = [f for f, ctx in SUBROUTINES.items() if loaded(self.cli, ctx)]
        if not fronts:
            self.add("subroutine", FAILURE, "neither rpo-guard-check nor rpo-guard-check-fastagi is loaded: "
                                            "#include rpo-guard.conf (or rpo-guard-fastagi.conf), dialplan reload")
            return self.checks
        for f in fronts:
            self.add(f"subroutine {SUBROUTINES[f]}", OK, "loaded")
        gl = globals_of(self.cli)
        usable = [f for f in fronts if self._target_check(f, gl)]
        if not usable:
            return self.checks
        allowed = self._allowed_number()
        try:
            self._install()
            for f in usable:
                self._calls_through(f, allowed)
        except SelftestError as exc:
            self.add("test calls", FAILURE, str(exc))
        finally:
            self._uninstall()
        return self.checks

    def _target_check(self, front: str, gl: dict) -> bool:
        if front == "agi":
            path = gl.get("RPO_GUARD_AGI", "")
            shown = path or f"{DEFAULT_AGI} (RPO_GUARD_AGI unset: the default)"
            path = path or DEFAULT_AGI
            if os.path.isfile(path) and os.access(path, os.X_OK):
                self.add("RPO_GUARD_AGI", OK if gl.get("RPO_GUARD_AGI") else WARNING, f"{shown}: executable")
                return True
            self.add("RPO_GUARD_AGI", FAILURE, f"{shown}: not an executable file; every call through "
                                               "rpo-guard-check is refused (agi_NOTFOUND / agi_FAILURE)")
            return False
        url = gl.get("RPO_GUARD_FASTAGI", "") or DEFAULT_FASTAGI
        ok, detail = fastagi_reachable(url)
        unset = "" if gl.get("RPO_GUARD_FASTAGI") else " (RPO_GUARD_FASTAGI unset: the default)"
        self.add("RPO_GUARD_FASTAGI", (OK if gl.get("RPO_GUARD_FASTAGI") else WARNING) if ok else FAILURE,
                 f"{url}{unset}: {detail}" + ("" if ok else "; every call through rpo-guard-check-fastagi is "
                                                           "refused (agi_FAILURE)"))
        return ok

    def _allowed_number(self) -> tuple[str | None, str]:
        """A number the register allows now for the brand and caller ID (the decision code the
        AGI runs), or None and why not."""
        from rpo_guard.guard import check_call
        from rpo_guard.register.store import Store
        candidates = [self.number] if self.number else []
        if not candidates:
            try:
                conn = sqlite3.connect(f"file:{self.cfg.register_db}?mode=ro", uri=True)
                try:
                    candidates = [r[0] for r in conn.execute(
                        "SELECT c.number FROM consultations c JOIN batches b ON b.id = c.batch_id "
                        "WHERE c.registered = 0 ORDER BY b.consulted_on DESC LIMIT 200")]
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                return None, f"register unreadable: {exc}"
        try:
            store = Store(self.cfg.register_db, self.cfg.busy_timeout_ms)
        except Exception as exc:
            return None, f"register unreadable: {exc}"
        try:
            last = "the register holds no number consulted as not registered"
            for n in candidates:
                v = check_call(self.cfg, store, n, self.brand, caller_id=self.caller_id).verdict
                if v.decision == "ALLOW":
                    return n, v.reason
                last = f"{n}: {v.reason}"
            return None, f"no number the register allows now (last tried {last})"
        finally:
            store.close()

    def _install(self) -> None:
        for ctx, exten, prio, app in _contexts():
            self.cli.rx(f"dialplan add extension {quote(f'{exten},{prio},{app}')} into {ctx} replace")

    def _uninstall(self) -> None:
        for ctx in (CONTEXT, RECORD, SINK):
            try:
                self.cli.rx(f"dialplan remove context {ctx}")
            except SelftestError:
                pass
        try:
            self.cli.rx(f"database deltree {FAMILY}/{self.run_id}")
        except SelftestError:
            pass

    def _call(self, front: str, number: str, forced_failure: bool = False) -> dict:
        self._calls += 1
        call_id = f"{self.run_id}{self._calls:02d}"
        fam = f"{FAMILY}/{call_id}"
        settings = {"number": number, "sub": SUBROUTINES[front], "brand": self.brand, "callerid": self.caller_id}
        if forced_failure:
            name, value = NOWHERE[front]
            settings["agi" if front == "agi" else "fastagi"] = value
        for key, value in settings.items():
            self.cli.rx(f"database put {quote(fam)} {quote(key)} {quote(value)}")
        self.cli.rx(f"channel originate Local/{call_id}@{CONTEXT}/n application Wait 30")
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            got = self._db(fam)
            if got.get("done") == "1":
                return got
            time.sleep(0.1)
        raise SelftestError(f"test call {call_id} through {SUBROUTINES[front]} did not end within {self.timeout} s")

    def _db(self, family: str) -> dict:
        out = self.cli.rx(f"database show {quote(family)}")
        rows = {}
        for line in out.splitlines():
            key, sep, value = line.partition(": ")
            if sep and key.strip().startswith(f"/{family}/"):
                rows[key.strip()[len(family) + 2:]] = value.strip()
        return rows

    def _audit(self, audit_id: str) -> dict | None:
        if not audit_id.isdigit():
            return None
        try:
            conn = sqlite3.connect(f"file:{self.cfg.audit_db}?mode=ro", uri=True)
            conn.row_factory = sqlite3.Row
            try:
                row = conn.execute("SELECT id, decision, reason, via, dialed FROM attempts WHERE id = ?",
                                   (int(audit_id),)).fetchone()
                return dict(row) if row else None
            finally:
                conn.close()
        except sqlite3.Error:
            return None

    def _calls_through(self, front: str, allowed: tuple[str | None, str]) -> None:
        sub = SUBROUTINES[front]
        via = f"{front}-selftest"
        # 1. must be refused
        o = self._call(front, REFUSED_NUMBER)
        row = self._audit(o.get("RPO_AUDIT_ID", ""))
        if o.get("sink"):
            self.add(f"{sub}: refused call", FAILURE, f"{REFUSED_NUMBER} reached the trunk stand-in: {o}")
        elif (o.get("RPO_RESULT"), o.get("RPO_REASON")) != ("BLOCK", "invalid_number"):
            self.add(f"{sub}: refused call", FAILURE, f"expected BLOCK invalid_number, got {o}")
        elif not row or (row["decision"], row["reason"], row["via"]) != ("BLOCK", "invalid_number", via):
            self.add(f"{sub}: refused call", FAILURE, f"refused, but audit row {o.get('RPO_AUDIT_ID')!r} is "
                                                       f"{row} (expected BLOCK invalid_number via {via})")
        else:
            self.add(f"{sub}: refused call", OK, f"{REFUSED_NUMBER}: BLOCK invalid_number, audit row {row['id']}")
        # 2. forced failure: the check cannot run for this call
        o = self._call(front, allowed[0] or REFUSED_NUMBER, forced_failure=True)
        if o.get("sink") or o.get("RPO_RESULT") != "BLOCK" or not o.get("RPO_REASON", "").startswith("agi_"):
            self.add(f"{sub}: forced failure", FAILURE,
                     f"{NOWHERE[front][0]}={NOWHERE[front][1]} for one call: expected BLOCK agi_..., got {o}")
        else:
            self.add(f"{sub}: forced failure", OK, f"the check could not run: BLOCK {o['RPO_REASON']}")
        # 3. must be let through to the sink
        number, why = allowed
        if number is None:
            self.add(f"{sub}: allowed call", WARNING, f"not tried: {why}")
            return
        o = self._call(front, number)
        row = self._audit(o.get("RPO_AUDIT_ID", ""))
        if o.get("RPO_RESULT") != "ALLOW" or o.get("sink") != number:
            self.add(f"{sub}: allowed call", FAILURE, f"{number} ({why} by the register) did not get through: {o}")
        elif not row or (row["decision"], row["via"]) != ("ALLOW", via):
            self.add(f"{sub}: allowed call", FAILURE, f"allowed, but audit row {o.get('RPO_AUDIT_ID')!r} is {row}")
        else:
            self.add(f"{sub}: allowed call", OK, f"{number}: ALLOW {o['RPO_REASON']}, reached the sink, "
                                                 f"audit row {row['id']}")


def verdict(checks: list[Check]) -> int:
    return max((LEVELS[c.level] for c in checks), default=2)
