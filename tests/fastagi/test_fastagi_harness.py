"""The harness's FastAGI peer against the recorded Asterisk 22.10.1 FastAGI sessions.

Each script-side recording (what the probe server read and wrote) is replayed:
a scripted server sends the probe's commands at the recorded moments (long
waits shortened), and must read from rpo_guard.harness.run_fastagi exactly the
bytes the probe read from Asterisk: the environment block, each response, the
inline HANGUP line where Asterisk put it, the trailing HANGUP and the close.
"""
import ast
import re
import socket
import threading
import time

import pytest

from conftest import TRANSCRIPTS
from rpo_guard.harness import Channel, run_fastagi

RECORDINGS = sorted((TRANSCRIPTS / "script-side").glob("fastagi-*.txt"))
_EVENT = re.compile(r"^\s*([\d.]+) (<<|>>|--) (.*)$")
# the caller hung up 1 s into a 3 s wait (transcript 16); the other sessions ran to the end
CALLER_HANGS_UP = {"fastagi-slow-1795339204.3687.txt": 0.1}


def recording(path):
    """(script, env pairs, steps): a step is (wait before, command, lines read after it)."""
    lines = path.read_text().splitlines()
    script = ast.literal_eval(lines[0].split("script=", 1)[1].rstrip(":"))
    env = []
    for line in lines[1:]:
        if not line.startswith("  agi_"):
            break
        key, _, value = line.strip(" ").partition(":")
        env.append((key, value[1:] if value.startswith(" ") else value))
    steps, last = [], 0.0
    for line in lines:
        m = _EVENT.match(line)
        if not m or m.group(2) == "--":
            continue
        at, payload = float(m.group(1)), ast.literal_eval(m.group(3))
        if m.group(2) == ">>":
            steps.append([0.3 if at - last > 100 else 0.0, payload, []])
        else:
            steps[-1][2].append(payload)
        last = at
    return script, env, steps


def channel_from(env: dict) -> Channel:
    ch = Channel(extension=env["agi_extension"], context=env["agi_context"], priority=int(env["agi_priority"]),
                 uniqueid=env["agi_uniqueid"], name=env["agi_channel"], callerid=env["agi_callerid"],
                 threadid=env["agi_threadid"])
    ch.callingpres = int(env["agi_callingpres"])
    return ch


def test_fastagi_recordings_are_present():
    assert len(RECORDINGS) >= 5, f"transcripts not found under {TRANSCRIPTS}"


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_fastagi_session_is_byte_identical(path):
    script, recorded_env, steps = recording(path)
    env = dict(recorded_env)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen = {"env": None, "read": [], "error": None}

    def scripted_server():
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            f = conn.makefile("rb")
            block = []
            while (line := f.readline()) not in (b"\n", b""):
                block.append(line.decode())
            seen["env"] = block
            for i, (wait, command, expected) in enumerate(steps):
                time.sleep(wait)
                conn.sendall(command.encode())
                last = i == len(steps) - 1
                for _ in range(len(expected) - (2 if last else 0)):
                    seen["read"].append(f.readline().decode())
            conn.shutdown(socket.SHUT_WR)  # done: Asterisk answers with HANGUP and closes
            while True:
                line = f.readline().decode()
                seen["read"].append(line)
                if not line:
                    break
            conn.close()
        except Exception as exc:  # reported by the test below
            seen["error"] = exc

    t = threading.Thread(target=scripted_server)
    t.start()
    session = run_fastagi("127.0.0.1", port, script, [env[f"agi_arg_{i}"] for i in range(1, 10) if f"agi_arg_{i}" in env],
                          channel_from(env), hangup_after=CALLER_HANGS_UP.get(path.name), timeout=20)
    t.join(20)
    listener.close()
    assert seen["error"] is None
    port_env = [f"{k}: {v.replace('127.0.0.1:4573', f'127.0.0.1:{port}')}\n" for k, v in recorded_env]
    assert seen["env"] == port_env
    assert seen["read"] == [line for _, _, expected in steps for line in expected]
    hung_up = "HANGUP\n" in [line for _, _, expected in steps for line in expected][:-2]  # before the closing one
    assert session.agistatus == ("HANGUP" if hung_up else "SUCCESS")
