"""One real Asterisk in a temp folder: its own asterisk.conf, no network listener, CLI only.

Everything Asterisk reads or writes (configuration, astdb, logs, spool, control socket) is
under ``root``; only the modules come from the installation. It runs in the foreground
(``-f``) as a child process; commands go through its control socket
(``asterisk -C <root>/etc/asterisk.conf -rx <command>``). No manager, HTTP or channel-driver
listener is configured: calls are placed with ``channel originate`` on Local channels.

The sandbox's own dialplan (``sandbox.conf``, always loaded) gives every test suite:

* ``sandbox-call``: the entry of each call placed with :meth:`Sandbox.originate`. It sets the
  call's variables (kept in astdb under ``sbx/<id>``), pushes a hangup handler that records
  the variables named in ``SBX_RECORD`` under ``sbxres/<id>`` when the call ends, then goes to
  the test's context and extension. ``__SBX_CALL`` (the call's id) is inherited by every
  channel the call dials.
* ``sandbox-sink``: stands in for a trunk. ``Dial(Local/${EXTEN}@sandbox-sink)`` records the
  number that reached it under ``sbxsink/<call id>``, answers and hangs up.

The test's own dialplan is loaded with :meth:`Sandbox.load_dialplan` (``#include`` lines of
shipped files are fine: absolute paths). ``clearglobalvars=yes``: each load defines all
globals afresh, none survive from an earlier test.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BINARY = "/opt/asterisk22/sbin/asterisk"
# What each call records when it ends, unless the caller names its own list.
DEFAULT_RECORD = ("RPO_RESULT", "RPO_REASON", "RPO_AUDIT_ID", "AGISTATUS", "GOSUB_RETVAL", "DIALSTATUS",
                  "HANGUPCAUSE", "PREDIAL_HOOK_RET")
# Modules that would listen on the network, talk to a database or need configuration we do
# not give; autoload loads everything else the installation has.
NOLOAD = ("chan_pjsip", "chan_sip", "chan_iax2", "chan_dahdi", "chan_unistim", "chan_skinny", "chan_mgcp",
          "chan_motif", "chan_console", "chan_alsa", "chan_oss", "chan_audiosocket", "chan_websocket",
          "chan_rtp", "res_pjsip", "res_ari", "res_http_websocket", "res_http_media_cache", "res_stasis",
          "res_xmpp", "res_hep", "res_snmp", "res_statsd", "res_phoneprov", "res_pjproject", "res_rtp_asterisk",
          "res_odbc", "res_config_odbc", "res_config_pgsql", "res_config_mysql", "res_config_ldap",
          "cdr_pgsql", "cdr_odbc", "cdr_radius", "cdr_tds", "cel_pgsql", "cel_odbc", "cel_radius", "cel_tds",
          "pbx_dundi", "pbx_ael", "pbx_lua", "pbx_realtime", "res_calendar", "res_smdi", "res_fax",
          "res_corosync", "res_prometheus", "res_aeap", "res_speech_aeap", "res_geolocation", "res_stir_shaken",
          "res_mwi_external", "res_mwi_external_ami", "res_musiconhold", "app_voicemail", "app_queue")
_SAFE_NAME = re.compile(r"_{0,2}[A-Za-z][A-Za-z0-9_]*\Z")

SANDBOX_DIALPLAN = r"""; the sandbox's own contexts (tests/astsandbox/sandbox.py)
[sandbox-call]
exten => _X.,1,Set(__SBX_CALL=${EXTEN})
 same => n,Set(CHANNEL(hangup_handler_push)=sandbox-record,s,1)
 same => n,Set(SBX_KEYS=${DB_KEYS(sbx/${EXTEN}/var)})
 same => n,Set(SBX_I=1)
 same => n(next),Set(SBX_K=${CUT(SBX_KEYS,\,,${SBX_I})})
 same => n,GotoIf($["${SBX_K}" = ""]?go)
 same => n,Set(${SBX_K}=${DB(sbx/${EXTEN}/var/${SBX_K})})
 same => n,Set(SBX_I=$[${SBX_I} + 1])
 same => n,Goto(next)
 same => n(go),ExecIf($["${DB_EXISTS(sbx/${EXTEN}/cidnum)}" = "1"]?Set(CALLERID(num)=${DB_RESULT}))
 same => n,ExecIf($["${DB_EXISTS(sbx/${EXTEN}/cidpres)}" = "1"]?Set(CALLERID(num-pres)=${DB_RESULT}))
 same => n,Goto(${DB(sbx/${EXTEN}/context)},${DB(sbx/${EXTEN}/exten)},1)

[sandbox-record]
exten => s,1,Set(SBX_I=1)
 same => n(next),Set(SBX_K=${CUT(SBX_RECORD,\,,${SBX_I})})
 same => n,GotoIf($["${SBX_K}" = ""]?done)
 same => n,Set(DB(sbxres/${SBX_CALL}/${SBX_K})=${${SBX_K}})
 same => n,Set(SBX_I=$[${SBX_I} + 1])
 same => n,Goto(next)
 same => n(done),Set(DB(sbxres/${SBX_CALL}/done)=1)
 same => n,Return()

[sandbox-setenv]
exten => s,1,Set(ENV(${SBX_ENV_NAME})=${SBX_ENV_VALUE})
 same => n,Hangup()

[sandbox-sink]
exten => _X.,1,Set(DB(sbxsink/${IF($["${SBX_CALL}" = ""]?none:${SBX_CALL})}/${UNIQUEID})=${EXTEN})
 same => n,Answer()
 same => n,Hangup()
exten => _+X.,1,Set(DB(sbxsink/${IF($["${SBX_CALL}" = ""]?none:${SBX_CALL})}/${UNIQUEID})=${EXTEN})
 same => n,Answer()
 same => n,Hangup()
"""


class SandboxError(RuntimeError):
    pass


def find_asterisk() -> tuple[str | None, str]:
    """(path, how it was found) of the Asterisk to run, or (None, why none was found):
    $ASTERISK, else ``asterisk`` on PATH, else /opt/asterisk22/sbin/asterisk."""
    env = os.environ.get("ASTERISK")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env, "$ASTERISK"
        return None, f"ASTERISK={env} is not an executable file"
    on_path = shutil.which("asterisk") or shutil.which("asterisk", path="/usr/sbin:/usr/local/sbin")
    if on_path:
        return on_path, "PATH"
    if os.path.isfile(DEFAULT_BINARY) and os.access(DEFAULT_BINARY, os.X_OK):
        return DEFAULT_BINARY, "default path"
    return None, (f"no Asterisk found ($ASTERISK unset, none on PATH, no {DEFAULT_BINARY}); "
                  "build one as .ci/run does (build.sh of the Asterisk source) or set ASTERISK=/path/to/asterisk")


def module_dir(binary: str) -> str:
    """Where the modules of the installation that ``binary`` belongs to are."""
    env = os.environ.get("ASTERISK_MODULES")
    if env:
        return env
    prefix = Path(binary).resolve().parent.parent
    candidates = [prefix / "lib" / "asterisk" / "modules", prefix / "lib64" / "asterisk" / "modules"]
    candidates += sorted(Path(prefix / "lib").glob("*-linux-gnu/asterisk/modules"))
    for c in candidates:
        if (c / "pbx_config.so").exists():
            return str(c)
    raise SandboxError(f"no Asterisk modules found for {binary} (looked in {', '.join(map(str, candidates))}); "
                       "set ASTERISK_MODULES")


def documentation_dir(binary: str) -> str | None:
    """The installation's XML documentation: Asterisk's configuration framework (stasis among
    others) refuses to start without it."""
    prefix = Path(binary).resolve().parent.parent
    for c in (prefix / "var" / "lib" / "asterisk" / "documentation", prefix / "share" / "asterisk" / "documentation",
              Path("/usr/share/asterisk/documentation"), Path("/var/lib/asterisk/documentation")):
        if c.is_dir():
            return str(c)
    return None


def _cli_quote(value: str) -> str:
    """One argument of an Asterisk CLI command line (double quotes, backslash escapes)."""
    if "\n" in value or "\r" in value:
        raise ValueError("a CLI argument cannot hold a line break")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _die_with_parent() -> None:
    """In the child: be killed when the test process dies, so no Asterisk outlives a crashed run."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class Call:
    """A call placed with :meth:`Sandbox.originate`: ``id`` is its extension in sandbox-call."""
    id: str
    exten: str
    context: str
    record: tuple = field(default=DEFAULT_RECORD)

    @property
    def local(self) -> str:
        return f"Local/{self.id}@sandbox-call"


class Sandbox:
    def __init__(self, binary: str, root: Path | str, *, verbose: int = 3, debug: int = 0,
                 env: dict | None = None, noload: tuple = NOLOAD):
        self.binary = binary
        self.root = Path(root)
        self.verbose = verbose
        self.debug = debug
        self.env = env or {}
        self.noload = noload
        self.etc = self.root / "etc"
        self.conf = self.etc / "asterisk.conf"
        self.log_file = self.root / "log" / "full"
        self.proc: subprocess.Popen | None = None
        self._next_call = 100000

    # -- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> "Sandbox":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _write_configs(self) -> None:
        for d in ("etc", "lib", "db", "keys", "data", "agi-bin", "spool", "run", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        docs = documentation_dir(self.binary)
        if docs and not (r / "data" / "documentation").exists():
            (r / "data" / "documentation").symlink_to(docs)
        self.conf.write_text(
            "[directories]\n"
            f"astetcdir => {r}/etc\nastmoddir => {module_dir(self.binary)}\nastvarlibdir => {r}/lib\n"
            f"astdbdir => {r}/db\nastkeydir => {r}/keys\nastdatadir => {r}/data\nastagidir => {r}/agi-bin\n"
            f"astspooldir => {r}/spool\nastrundir => {r}/run\nastlogdir => {r}/log\n"
            f"astsbindir => {Path(self.binary).parent}\n"
            "[options]\n"
            f"verbose = {self.verbose}\ndebug = {self.debug}\n"
            "documentation_language = en_US\nhideconnect = yes\n")
        (self.etc / "modules.conf").write_text(
            "[modules]\nautoload = yes\n" + "".join(f"noload => {m}.so\n" for m in self.noload))
        (self.etc / "logger.conf").write_text(
            "[general]\ndateformat = %F %T.%3q\n[logfiles]\nfull => notice,warning,error,verbose,debug\n")
        (self.etc / "sandbox.conf").write_text(SANDBOX_DIALPLAN)
        (self.etc / "sandbox-test.conf").write_text("; the running test's dialplan (Sandbox.load_dialplan)\n")
        (self.etc / "extensions.conf").write_text(
            "[general]\nstatic = yes\nwriteprotect = yes\nclearglobalvars = yes\n"
            "#include sandbox.conf\n#include sandbox-test.conf\n")
        for name in ("manager.conf", "http.conf"):  # present, and listening on nothing
            (self.etc / name).write_text("[general]\nenabled = no\n")

    def start(self, timeout: float = 60) -> None:
        self._write_configs()
        env = dict(os.environ)
        env.update(self.env)
        self._out = open(self.root / "log" / "stdout", "ab")
        self.proc = subprocess.Popen([self.binary, "-C", str(self.conf), "-f", "-n"], stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SandboxError(f"Asterisk exited with {self.proc.returncode} while starting: {self.tail()}")
            if (self.root / "run" / "asterisk.ctl").exists():
                r = self._rx("core waitfullybooted", timeout=max(1.0, end - time.monotonic()))
                if r.returncode == 0 and "fully booted" in r.stdout.lower():
                    break
            if time.monotonic() > end:
                self.stop()
                raise SandboxError(f"Asterisk did not start within {timeout} s: {self.tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self._rx("core stop now", timeout=timeout)
            except (subprocess.TimeoutExpired, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- CLI -----------------------------------------------------------------------------------

    def _rx(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([self.binary, "-C", str(self.conf), "-rx", command], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def cli(self, command: str, timeout: float = 30) -> str:
        """Run one CLI command through the control socket; its output."""
        if not self.running:
            raise SandboxError(f"Asterisk is not running (command {command!r}): {self.tail()}")
        r = self._rx(command, timeout)
        if r.returncode != 0:
            raise SandboxError(f"asterisk -rx {command!r} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r.stdout

    def control_args(self) -> list[str]:
        """The arguments that reach this Asterisk's CLI: ``[binary, -C, conf]``."""
        return [self.binary, "-C", str(self.conf)]

    # -- dialplan --------------------------------------------------------------------------------

    def load_dialplan(self, text: str) -> str:
        """Make ``text`` the test's dialplan (replacing the previous test's) and reload.
        Raises when Asterisk logged a parse error for it; returns what the reload logged."""
        (self.etc / "sandbox-test.conf").write_text(text)
        mark = self.log_mark()
        out = self.cli("dialplan reload")  # returns once the new dialplan is in place
        logged = self.log_since(mark)
        errors = [line for line in logged.splitlines() if " WARNING[" in line or " ERROR[" in line]
        if errors:
            raise SandboxError("dialplan reload: " + "\n".join(errors))
        return out + logged

    def set_global(self, name: str, value: str) -> None:
        self.cli(f"dialplan set global {name} {_cli_quote(value)}")

    def get_global(self, name: str) -> str:
        out = self.cli(f"dialplan show globals")
        for line in out.splitlines():
            m = re.match(rf"\s*{re.escape(name)}=(.*)$", line)
            if m:
                return m.group(1)
        return ""

    def show_context(self, context: str) -> str:
        return self.cli(f"dialplan show {context}")

    # -- calls -------------------------------------------------------------------------------------

    def db_put(self, family: str, key: str, value: str) -> None:
        self.cli(f"database put {_cli_quote(family)} {_cli_quote(key)} {_cli_quote(value)}")

    def db_show(self, family: str) -> dict[str, str]:
        out = self.cli(f"database show {_cli_quote(family)}")
        rows = {}
        prefix = "/" + family.strip("/") + "/"
        for line in out.splitlines():
            key, sep, value = line.partition(": ")
            if not sep or not key.startswith(prefix):
                continue
            rows[key.strip()[len(prefix):]] = value.rstrip()  # the CLI pads values with spaces
        return rows

    def originate(self, exten: str, context: str, *, variables: dict | None = None, callerid: str | None = None,
                  callerid_pres: str | None = None, record: tuple | list = DEFAULT_RECORD,
                  app: str = "Wait", app_data: str = "120") -> Call:
        """Place a call: a Local channel whose far half sets ``variables`` (and the caller ID),
        then runs ``exten@context``; its near half runs ``app`` (default: waits, like a
        caller). Returns at once; :meth:`wait_for` waits for the call to end."""
        call_id = str(self._next_call)
        self._next_call += 1
        record = tuple(record)
        variables = dict(variables or {})
        variables["SBX_RECORD"] = ",".join(record)
        for name, value in variables.items():
            if not _SAFE_NAME.match(name):
                raise ValueError(f"variable name {name!r}: letters, digits and _ only")
            self.db_put(f"sbx/{call_id}/var", name, str(value))
        if callerid is not None:
            self.db_put(f"sbx/{call_id}", "cidnum", callerid)
        if callerid_pres is not None:
            self.db_put(f"sbx/{call_id}", "cidpres", callerid_pres)
        self.db_put(f"sbx/{call_id}", "context", context)
        self.db_put(f"sbx/{call_id}", "exten", exten)
        self.cli(f"channel originate Local/{call_id}@sandbox-call/n application {app} {app_data}")
        return Call(call_id, exten, context, record)

    def set_env(self, name: str, value: str) -> None:
        """Set a variable in Asterisk's own environment (what every process AGI inherits)."""
        self.wait_for(self.originate("s", "sandbox-setenv", variables={"SBX_ENV_NAME": name, "SBX_ENV_VALUE": value},
                                     record=()))

    def outcome(self, call: Call) -> dict[str, str] | None:
        """The variables the call recorded when it ended, or None while it is up."""
        rows = self.db_show(f"sbxres/{call.id}")
        if rows.get("done") != "1":
            return None
        rows.pop("done")
        return rows

    def wait_for(self, call: Call, timeout: float = 30) -> dict[str, str]:
        """Wait for the call to end; the variables it recorded (``record`` of originate)."""
        end = time.monotonic() + timeout
        while True:
            found = self.outcome(call)
            if found is not None:
                return found
            if time.monotonic() > end:
                raise SandboxError(f"call {call.id} ({call.exten}@{call.context}) still up after {timeout} s; "
                                   f"channels: {self.channels()}")
            time.sleep(0.05)

    def channels(self, call: Call | None = None) -> list[str]:
        """Names of the channels up now (of one call's Local pair when ``call`` is given)."""
        out = self.cli("core show channels concise")
        names = [line.split("!", 1)[0] for line in out.splitlines() if "!" in line]
        if call is not None:
            names = [n for n in names if n.startswith(call.local + "-")]
        return names

    def hangup(self, call: Call) -> None:
        """The caller hangs up: the near half of the call's Local pair (the far half, which runs
        the dialplan, is hung up with it)."""
        for name in self.channels(call):
            if name.endswith(";1"):
                self.cli(f"channel request hangup {name}")

    def sink_hits(self, call: Call | None = None) -> list[str]:
        """Numbers that reached sandbox-sink (from one call, or from every call)."""
        if call is not None:
            return list(self.db_show(f"sbxsink/{call.id}").values())
        return list(self.db_show("sbxsink").values())

    # -- log ---------------------------------------------------------------------------------------

    def log_mark(self) -> int:
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def log_since(self, mark: int = 0) -> str:
        if not self.log_file.exists():
            return ""
        with open(self.log_file, "rb") as fh:
            fh.seek(mark)
            return fh.read().decode("utf-8", "replace")

    def wait_log(self, text: str, mark: int = 0, timeout: float = 10, required: bool = True) -> bool:
        end = time.monotonic() + timeout
        while text not in self.log_since(mark):
            if time.monotonic() > end:
                if required:
                    raise SandboxError(f"{text!r} not logged within {timeout} s")
                return False
            time.sleep(0.05)
        return True

    def tail(self, lines: int = 30) -> str:
        text = self.log_since(max(0, self.log_mark() - 20000))
        out = (self.root / "log" / "stdout")
        extra = out.read_text(errors="replace")[-3000:] if out.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + ("\n[stdout] " + extra if extra.strip() else "")
