"""An AGI peer that behaves as Asterisk 22.10.1 does, for simulate-call and tests.

Asterisk cannot be installed here, so this module plays its part of the AGI
protocol exactly as the recorded sessions in ``tests/fixtures/asterisk-transcripts``
show it, byte for byte:

* the environment block: the same keys in the same order, ``key: value\\n``
  lines (``agi_accountcode: `` keeps its trailing space), ``agi_arg_N`` for
  each argument, then one empty line; FastAGI adds ``agi_network: yes`` and
  ``agi_network_script`` first and an ``agi://`` request;
* the responses: ``200 result=N [(data)]``, ``510 Invalid or unknown
  command``, ``511 Command Not Permitted on a dead channel or intercept
  routine`` for the commands a dead channel refuses (transcript 17), and the
  multi-line ``520-`` usage block;
* the command parser (quotes and backslash escapes as res_agi parses them),
  command words matched case-insensitively;
* hangup: the channel dies, a process AGI gets SIGHUP (unless
  ``AGISIGHUP=no``) and may go on with dead-channel commands; a FastAGI
  session gets an inline ``HANGUP`` line; when the script is done the
  FastAGI peer sends ``HANGUP`` and closes;
* AGISTATUS: SUCCESS on exit 0, FAILURE on a non-zero exit or a script that
  cannot run, NOTFOUND for a missing script, HANGUP once the channel is dead.

Commands that a real Asterisk would act on but that this peer does not model
(media, DTMF) answer ``200 result=0``; rpo_guard uses none of them.

It reads best whole: the command table, the engine that answers as
Asterisk does and the two transports (process and FastAGI) are one model of
one peer, checked together against the recorded sessions.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

VERSION = "22.10.1"

R_510 = "510 Invalid or unknown command\n"
R_511 = "511 Command Not Permitted on a dead channel or intercept routine\n"
R_520_HEAD = "520-Invalid command syntax.  Proper usage follows:\n"
R_520_TAIL = "520 End of proper usage.\n"

# (words, allowed on a dead channel, usage text) — `agi show commands` of 22.10.1 (transcript 17)
_COMMANDS = [
    ("answer", False, "Answer channel"),
    ("asyncagi break", True, "Interrupts Async AGI"),
    ("channel status", False, "Returns status of the connected channel."),
    ("database del", True, "Removes database key/value"),
    ("database deltree", True, "Removes database keytree/value"),
    ("database get", True, "Gets database value"),
    ("database put", True, "Adds/updates database value"),
    ("exec", True, "Executes a given Application"),
    ("get data", False, "Prompts for DTMF on a channel"),
    ("get full variable", True, "Evaluates a channel expression"),
    ("get option", False, "Stream file, prompt for DTMF, with timeout."),
    ("get variable", True,
     "Returns <literal>0</literal> if <replaceable>variablename</replaceable> is not set. Returns "
     "<literal>1</literal> if <replaceable>variablename</replaceable> is set and returns the variable "
     "in parentheses.\nExample return code: 200 result=1 (testvariable)"),
    ("hangup", False, "Hangup a channel."),
    ("noop", True, "Does nothing."),
    ("receive char", False, "Receives one character from channels supporting it."),
    ("receive text", False, "Receives text from channels supporting it."),
    ("record file", False, "Records to a given file."),
    ("say alpha", False, "Says a given character string."),
    ("say digits", False, "Says a given digit string."),
    ("say number", False, "Says a given number."),
    ("say phonetic", False, "Says a given character string with phonetics."),
    ("say date", False, "Says a given date."),
    ("say time", False, "Says a given time."),
    ("say datetime", False, "Says a given time as specified by the format given."),
    ("send image", False, "Sends images to channels supporting it."),
    ("send text", False, "Sends text to channels supporting it."),
    ("set autohangup", False, "Autohangup channel in some time."),
    ("set callerid", False, "Sets callerid for the current channel."),
    ("set context", False, "Sets channel context."),
    ("set extension", False, "Changes channel extension."),
    ("set music", False, "Enable/Disable Music on hold generator"),
    ("set priority", False, "Set channel dialplan priority."),
    ("set variable", True, "Sets a variable to the current channel."),
    ("stream file", False, "Sends audio file on channel."),
    ("control stream file", False, "Sends audio file on channel and allows the listener to control the stream."),
    ("tdd mode", False, "Toggles TDD mode (for the deaf)."),
    ("verbose", True,
     "Sends <replaceable>message</replaceable> to the console via verbose message system. "
     "<replaceable>level</replaceable> is the verbose level (1-4). Always returns <literal>1</literal>"),
    ("wait for digit", False, "Waits for a digit to be pressed."),
    ("speech create", False, "Creates a speech object."),
    ("speech set", False, "Sets a speech engine setting."),
    ("speech destroy", True, "Destroys a speech object."),
    ("speech load grammar", False, "Loads a grammar."),
    ("speech unload grammar", True, "Unloads a grammar."),
    ("speech activate grammar", False, "Activates a grammar."),
    ("speech deactivate grammar", False, "Deactivates a grammar."),
    ("speech recognize", False, "Recognizes speech."),
    ("gosub", False, "Cause the channel to execute the specified dialplan subroutine."),
]
COMMANDS = {tuple(words.split()): (dead_ok, usage) for words, dead_ok, usage in _COMMANDS}
MAX_WORDS = max(len(k) for k in COMMANDS)

AST_ENVIRONMENT = {  # what a process AGI inherits from Asterisk (transcript 14)
    "AST_AGI_DIR": "/usr/var/lib/asterisk/agi-bin", "AST_CONFIG_DIR": "/etc/asterisk",
    "AST_CONFIG_FILE": "/etc/asterisk/asterisk.conf", "AST_DATA_DIR": "/usr/var/lib/asterisk",
    "AST_LOG_DIR": "/var/log/asterisk", "AST_MODULE_DIR": "/usr/lib/asterisk/modules",
    "AST_SYSTEMNAME": "", "AST_VERSION": VERSION,
}


def parse_args(line: str) -> list[str]:
    """Split a command line as res_agi's parse_args does.

    Whitespace separates words; double quotes group (and a quoted empty
    string is a word); a backslash makes the next character literal.
    """
    argv, cur, quoted, escaped, started = [], [], False, False, False
    for ch in line:
        if escaped:
            cur.append(ch)
            escaped, started = False, True
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted, started = not quoted, True
        elif ch in " \t" and not quoted:
            if started:
                argv.append("".join(cur))
                cur, started = [], False
        else:
            cur.append(ch)
            started = True
    if started:
        argv.append("".join(cur))
    return argv


@dataclass
class Channel:
    """The channel an AGI runs on, with the values the environment block shows."""
    extension: str = "3912345678"
    context: str = "outbound"
    priority: int = 3
    uniqueid: str = "1795339068.25"
    name: str = ""
    callerid: str = "unknown"
    calleridname: str = "unknown"
    callingpres: int = 67
    accountcode: str = ""
    language: str = "en"
    type: str = "Local"
    threadid: str = "140500322555584"
    variables: dict = field(default_factory=dict)
    alive: bool = True

    def __post_init__(self):
        if not self.name:
            self.name = f"Local/{self.extension}@{self.context}-0000000c;2"
        if self.callerid != "unknown":
            self.callingpres = 0  # as in transcript 02: a set caller ID is presentable

    def env_block(self, request: str, args: list[str], network_script: str | None = None) -> list[tuple[str, str]]:
        env = []
        if network_script is not None:
            env += [("agi_network", "yes"), ("agi_network_script", network_script)]
        env += [
            ("agi_request", request), ("agi_channel", self.name), ("agi_language", self.language),
            ("agi_type", self.type), ("agi_uniqueid", self.uniqueid), ("agi_version", VERSION),
            ("agi_callerid", self.callerid), ("agi_calleridname", self.calleridname),
            ("agi_callingpres", str(self.callingpres)), ("agi_callingani2", "0"),
            ("agi_callington", "0"), ("agi_callingtns", "0"), ("agi_dnid", "unknown"),
            ("agi_rdnis", "unknown"), ("agi_context", self.context), ("agi_extension", self.extension),
            ("agi_priority", str(self.priority)), ("agi_enhanced", "0.0"),
            ("agi_accountcode", self.accountcode), ("agi_threadid", self.threadid),
        ]
        env += [(f"agi_arg_{i}", a) for i, a in enumerate(args, 1)]
        return env


def encode_env(env: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\n" for k, v in env).encode() + b"\n"


class CommandEngine:
    """Answers AGI commands for one channel as res_agi does."""

    def __init__(self, channel: Channel, astdb: dict | None = None, on_hangup=None):
        self.channel = channel
        self.astdb = astdb if astdb is not None else {}
        self.on_hangup = on_hangup  # called when the script itself sends HANGUP

    def _expand(self, expr: str) -> str:
        ch = self.channel

        def one(m):
            name = m.group(1)
            if name == "CALLERID(num)":
                return ch.callerid
            if name == "EXTEN":
                return ch.extension
            if name == "CONTEXT":
                return ch.context
            if name == "UNIQUEID":
                return ch.uniqueid
            return ch.variables.get(name, "")
        return re.sub(r"\$\{([^}]*)\}", one, expr)

    def handle(self, line: str) -> str:
        argv = parse_args(line)
        words = tuple(w.lower() for w in argv)
        for n in range(min(MAX_WORDS, len(words)), 0, -1):
            if words[:n] in COMMANDS:
                key = words[:n]
                break
        else:
            return R_510
        dead_ok, usage = COMMANDS[key]
        if not self.channel.alive and not dead_ok:
            return R_511
        result = self._run(" ".join(key), argv)
        if result is None:
            return R_520_HEAD + usage + "\n" + R_520_TAIL
        return result

    def _run(self, cmd: str, argv: list[str]) -> str | None:
        ch, argc = self.channel, len(argv)
        if cmd == "verbose":
            return "200 result=1\n" if argc >= 2 else None
        if cmd == "set variable":
            if argc != 4:
                return None
            ch.variables[argv[2]] = argv[3]
            return "200 result=1\n"
        if cmd == "get variable":
            if argc != 3:
                return None
            if argv[2] in ch.variables:
                return f"200 result=1 ({ch.variables[argv[2]]})\n"
            return "200 result=0\n"
        if cmd == "get full variable":
            if argc not in (4, 5):
                return None
            return f"200 result=1 ({self._expand(argv[3])})\n"
        if cmd == "channel status":
            return "200 result=4\n"
        if cmd == "noop":
            return "200 result=0\n"
        if cmd == "hangup":
            ch.alive = False
            if self.on_hangup:
                self.on_hangup()
            return "200 result=1\n"
        if cmd == "database put":
            if argc != 5:
                return None
            self.astdb[(argv[2], argv[3])] = argv[4]
            return "200 result=1\n"
        if cmd == "database get":
            if argc != 4:
                return None
            value = self.astdb.get((argv[2], argv[3]))
            return "200 result=0\n" if value is None else f"200 result=1 ({value})\n"
        if cmd == "database del":
            if argc != 4:
                return None
            return "200 result=1\n" if self.astdb.pop((argv[2], argv[3]), None) is not None else "200 result=0\n"
        if cmd == "answer":
            return "200 result=0\n"
        return "200 result=0\n"


class _Exchange:
    """Asterisk's side of the command loop, for both peers: splits what the script
    sends into command lines, logs each line and its response as res_agi does
    (``Rx <<`` / ``Tx >>``) and answers it through the :class:`CommandEngine`."""

    def __init__(self, engine: CommandEngine, tx: list[str], prefix: str,
                 hangup_before_command: int | None, hang_up):
        self.engine, self.tx, self.prefix = engine, tx, prefix
        self.hangup_before_command, self.hang_up = hangup_before_command, hang_up
        self.buf = b""
        self.commands = 0

    def responses(self, chunk: bytes):
        """``(n, response)`` for each complete command line received so far (n counts
        from 1). With ``hangup_before_command`` = N, ``hang_up`` runs just before the
        Nth command is answered. The peer logs the response it sends with :meth:`log`."""
        self.buf += chunk
        while b"\n" in self.buf:
            raw, self.buf = self.buf.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").rstrip("\r")
            self.commands += 1
            if self.commands == self.hangup_before_command:
                self.hang_up()
            self.tx.append(self.prefix + "Rx << " + line)
            yield self.commands, self.engine.handle(line)

    def log(self, response: str) -> None:
        for out in response.rstrip("\n").split("\n"):
            self.tx.append(self.prefix + "Tx >> " + out)


@dataclass
class Session:
    """What happened: the transcript lines, the channel and the AGISTATUS."""
    agistatus: str
    channel: Channel
    transcript: list[str]
    exit_code: int | None = None
    stderr: bytes = b""
    sighup_sent: bool = False
    elapsed: float = 0.0

    @property
    def result(self) -> str:
        return self.channel.variables.get("RPO_RESULT", "")

    @property
    def reason(self) -> str:
        return self.channel.variables.get("RPO_REASON", "")

    @property
    def dialplan_allows(self) -> bool:
        """What the shipped subroutine (dialplan/rpo-guard.conf) concludes."""
        return self.agistatus == "SUCCESS" and self.result == "ALLOW"


def run_process_agi(script: str, args: list[str], channel: Channel | None = None, *,
                    env: dict | None = None, hangup_after: float | None = None,
                    hangup_before_command: int | None = None, agisighup: bool = True,
                    timeout: float = 30.0, env_block_override: bytes | None = None,
                    replace_responses: dict[int, str] | None = None,
                    user: str | None = None, preexec_fn=None) -> Session:
    """Run a process AGI as Asterisk does and play Asterisk's side.

    ``script`` is the path the dialplan names (argv[0] is that path, the cwd
    is ``/``, the environment is Asterisk's plus AST_* variables). The caller
    can hang up after ``hangup_after`` seconds, or just before the script's
    Nth command (1-based) is answered. ``replace_responses`` answers the Nth
    command with the given response instead (fault injection: a 510, 511 or
    520 where the script expected 200). ``user`` runs the script as that
    account (as Asterisk runs AGIs as ``asterisk``; needs root), and
    ``preexec_fn`` runs in the child before exec (fault injection, e.g. a
    file-size limit that makes the disk look full).
    """
    channel = channel or Channel()
    tx: list[str] = []
    prefix = f"<{channel.name}>AGI "
    if "AGISIGHUP" in channel.variables:
        agisighup = channel.variables["AGISIGHUP"].lower() not in ("no", "false", "0")

    if not os.path.exists(script):
        tx.append(f"WARNING res_agi.c: Failed to execute '{script}': File does not exist.")
        return Session("NOTFOUND", channel, tx)
    if not os.access(script, os.X_OK):
        tx.append(f"res_agi.c: Failed to execute '{script}': Permission denied")
        return Session("FAILURE", channel, tx)

    child_env = dict(os.environ)
    child_env.update(AST_ENVIRONMENT)
    child_env.update(env or {})
    started = time.monotonic()
    proc = subprocess.Popen([script, *args], executable=script, cwd="/", env=child_env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, user=user, preexec_fn=preexec_fn)
    stderr_chunks: list[bytes] = []
    t_err = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    t_err.start()
    state = {"sighup": False}

    def hang_up():
        if channel.alive:
            channel.alive = False
        if agisighup and not state["sighup"] and proc.poll() is None:
            state["sighup"] = True
            try:
                proc.send_signal(signal.SIGHUP)
            except ProcessLookupError:
                pass

    exchange = _Exchange(CommandEngine(channel, on_hangup=hang_up), tx, prefix, hangup_before_command, hang_up)
    request = script
    block = env_block_override if env_block_override is not None else encode_env(
        channel.env_block(request, args))
    for line in block.decode("utf-8", "replace").split("\n")[:-1]:
        tx.append(prefix + "Tx >> " + line)
    try:
        proc.stdin.write(block)
        proc.stdin.flush()
    except BrokenPipeError:
        pass

    timer = None
    if hangup_after is not None:
        timer = threading.Timer(hangup_after, hang_up)
        timer.start()
    timed_out = False
    deadline = started + timeout
    fd = proc.stdout.fileno()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.05))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            for n, response in exchange.responses(chunk):
                if replace_responses and n in replace_responses:
                    response = replace_responses[n]
                exchange.log(response)
                try:
                    proc.stdin.write(response.encode())
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass
    finally:
        if timer:
            timer.cancel()
    if timed_out:
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    code = proc.wait()
    t_err.join(5)
    elapsed = time.monotonic() - started
    if timed_out:
        status = "TIMEOUT"  # Asterisk would still be waiting; tests treat it as a failure
    elif not channel.alive:
        status = "HANGUP"
    elif code == 0:
        status = "SUCCESS"
    else:
        status = "FAILURE"
    returning = 4 if status == "HANGUP" else 0
    tx.append(f"{prefix}Script {script} completed, returning {returning}")
    return Session(status, channel, tx, exit_code=code, stderr=b"".join(stderr_chunks),
                   sighup_sent=state["sighup"], elapsed=elapsed)


def run_fastagi(host: str, port: int, script: str, args: list[str], channel: Channel | None = None, *,
                hangup_after: float | None = None, hangup_before_command: int | None = None,
                timeout: float = 30.0, env_block_override: bytes | None = None,
                connect_timeout: float = 5.0, answer_delay: float = 0.0) -> Session:
    """Call a FastAGI server as Asterisk does: ``AGI(agi://HOST:PORT/SCRIPT,ARGS...)``.

    ``script`` may carry a query string (``check?x=1``): Asterisk passes it in
    ``agi_network_script`` and ``agi_request`` unchanged (transcript 08).
    As in transcripts 07-10, 13 and 16:

    * connection refused: two WARNING lines, AGISTATUS=FAILURE, nothing set;
    * the caller hanging up (``hangup_after`` seconds after the connection, or
      just before the server's Nth command is answered) kills the channel and
      sends one inline ``HANGUP`` line at once, even while the server waits
      for the response to a command; later commands get 511 unless a dead
      channel allows them;
    * ``answer_delay`` seconds pass before each response (a loaded Asterisk);
    * the server sending the HANGUP command: ``200 result=1`` then ``HANGUP``;
    * when the server closes (or half-closes) its side: "Script ... completed",
      a trailing ``HANGUP`` line, then Asterisk closes. AGISTATUS is SUCCESS,
      or HANGUP once the channel is dead.
    """
    import socket

    channel = channel or Channel()
    tx: list[str] = []
    prefix = f"<{channel.name}>AGI "
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"agi://{hostport}/{script}"
    started = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except OSError as exc:
        reason = "Connection refused" if isinstance(exc, ConnectionRefusedError) else (exc.strerror or str(exc))
        tx.append(f"WARNING res_agi.c: Connecting to '{hostport}' failed for url '{request}': {reason}")
        tx.append("WARNING res_agi.c: Couldn't connect to any host.  FastAGI failed.")
        return Session("FAILURE", channel, tx, elapsed=time.monotonic() - started)
    sock.setblocking(False)
    state = {"hangup_sent": False, "pending_hangup_line": False}

    def send(data: bytes) -> bool:
        end = time.monotonic() + 5.0
        view = memoryview(data)
        while view:
            try:
                n = sock.send(view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > end:
                    return False
                select.select([], [sock], [], 0.05)
            except OSError:
                return False
        return True

    def caller_hangs_up():
        if channel.alive:
            channel.alive = False
        if not state["hangup_sent"]:
            state["hangup_sent"] = True
            tx.append(prefix + "Tx >> HANGUP")
            send(b"HANGUP\n")

    def script_hangup():  # the HANGUP command: answered first, then the HANGUP line
        state["pending_hangup_line"] = True

    exchange = _Exchange(CommandEngine(channel, on_hangup=script_hangup), tx, prefix, hangup_before_command,
                         caller_hangs_up)
    block = env_block_override if env_block_override is not None else encode_env(
        channel.env_block(request, args, network_script=script))
    for line in block.decode("utf-8", "replace").split("\n")[:-1]:
        # Asterisk logs the two network lines without the channel prefix (transcript 07)
        tx.append(("AGI " if line.startswith("agi_network") else prefix) + "Tx >> " + line)
    send(block)

    hangup_at = started + hangup_after if hangup_after is not None else None
    deadline = started + timeout
    status = None
    try:
        while True:
            now = time.monotonic()
            if hangup_at is not None and now >= hangup_at:
                caller_hangs_up()
                hangup_at = None
            if now >= deadline:
                status = "TIMEOUT"  # Asterisk would still be waiting; tests treat it as a failure
                break
            wait = deadline - now
            if hangup_at is not None:
                wait = min(wait, max(0.0, hangup_at - now))
            ready, _, _ = select.select([sock], [], [], min(wait, 0.05))
            if not ready:
                continue
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, BlockingIOError) as exc:
                if isinstance(exc, BlockingIOError):
                    continue
                chunk = b""
            if not chunk:
                break
            for _, response in exchange.responses(chunk):
                if answer_delay:
                    time.sleep(answer_delay)
                exchange.log(response)
                send(response.encode())
                if state["pending_hangup_line"]:
                    state["pending_hangup_line"] = False
                    if not state["hangup_sent"]:
                        state["hangup_sent"] = True
                        tx.append(prefix + "Tx >> HANGUP")
                        send(b"HANGUP\n")
    finally:
        if status != "TIMEOUT":
            status = "HANGUP" if not channel.alive else "SUCCESS"
            tx.append(f"{prefix}Script {request} completed, returning {4 if status == 'HANGUP' else 0}")
            tx.append(prefix + "Tx >> HANGUP")
            send(b"HANGUP\n")
        try:
            sock.close()
        except OSError:
            pass
    return Session(status, channel, tx, elapsed=time.monotonic() - started)
