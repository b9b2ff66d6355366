"""The Asterisk peer against the recorded Asterisk 22.10.1 sessions, byte for byte.

Each recorded process-AGI session is replayed through rpo_guard.harness: the
environment block it builds must be the bytes the probe script read, and each
command the probe sent must get the response Asterisk gave.
"""
import ast
import re

import pytest

from conftest import TRANSCRIPTS
from rpo_guard.harness import Channel, CommandEngine, encode_env, parse_args

SCRIPT_SIDE = sorted((TRANSCRIPTS / "script-side").glob("process-*.txt"))
ASTERISK_SIDE = [TRANSCRIPTS / f for f in ("01-process-basic.txt", "02-process-errors.txt",
                                            "03-process-hangup-sighup-handled.txt",
                                            "04-process-hangup-sighup-default.txt",
                                            "05-process-hangup-AGISIGHUP-no.txt",
                                            "15-process-caller-hangs-up-during-lookup.txt")]
_EVENT = re.compile(r"^\s*[\d.]+ (<<|>>|--|SIG) (.*)$")


def script_side(path):
    """(argv, env pairs, events) of a script-side recording."""
    lines = path.read_text().splitlines()
    argv = ast.literal_eval(lines[0].split("argv=", 1)[1].split(" pid=")[0])
    events = []
    for line in lines:
        m = _EVENT.match(line)
        if m:
            events.append((m.group(1), ast.literal_eval(m.group(2))))
    return argv, events


def channel_from_env(env: dict) -> Channel:
    ch = Channel(extension=env["agi_extension"], context=env["agi_context"], priority=int(env["agi_priority"]),
                 uniqueid=env["agi_uniqueid"], name=env["agi_channel"], callerid=env["agi_callerid"],
                 threadid=env["agi_threadid"])
    ch.callingpres = int(env["agi_callingpres"])
    return ch


def test_recordings_are_present():
    assert len(SCRIPT_SIDE) >= 5, f"transcripts not found under {TRANSCRIPTS}"


@pytest.mark.parametrize("path", SCRIPT_SIDE, ids=lambda p: p.name)
def test_environment_block_is_byte_identical(path):
    argv, events = script_side(path)
    received = []
    for kind, payload in events:
        if kind != "<<":
            continue
        received.append(payload)
        if payload == "\n":
            break
    env = dict(line.rstrip("\n").split(": ", 1) if ": " in line else (line.rstrip(":\n"), "")
               for line in received[:-1])
    channel = channel_from_env(env)
    built = encode_env(channel.env_block(argv[0], argv[1:]))
    assert built == "".join(received).encode()


@pytest.mark.parametrize("path", SCRIPT_SIDE, ids=lambda p: p.name)
def test_responses_are_byte_identical(path):
    argv, events = script_side(path)
    env_lines, i = [], 0
    while events[i] != ("<<", "\n"):
        if events[i][0] == "<<":
            env_lines.append(events[i][1].rstrip("\n").split(": ", 1))
        i += 1
    env = {k: (v[0] if v else "") for k, *v in env_lines}
    engine = CommandEngine(channel_from_env(env))
    pending, expected = None, []
    checked = 0

    def flush():
        nonlocal checked
        if pending is not None:
            assert engine.handle(pending.rstrip("\n")) == "".join(expected), pending
            checked += 1

    for kind, payload in events[i + 1:]:
        if kind == ">>":
            flush()
            pending, expected = payload, []
        elif kind == "<<":
            expected.append(payload)
    flush()
    assert checked >= 3


def asterisk_side(path):
    """(env, [(command, response text)]) from an Asterisk full-log slice."""
    env, pairs, current = {}, [], None
    prev_was_tx = False
    for line in path.read_text().splitlines():
        m = re.search(r"AGI (Tx >>|Rx <<) ?(.*)$", line)
        if m:
            kind, text = m.groups()
            if kind == "Tx >>" and text.startswith("agi_") and current is None:
                k, _, v = text.partition(": ")
                env[k] = v
                prev_was_tx = False
                continue
            if kind == "Rx <<":
                current = [text, ""]
                pairs.append(current)
                prev_was_tx = False
            elif current is not None:
                current[1] += text + "\n"
                prev_was_tx = True
        elif prev_was_tx and not line.startswith(("[", "#")):
            current[1] += line + "\n"  # continuation of a multi-line usage text
        else:
            prev_was_tx = False
    return env, pairs


@pytest.mark.parametrize("path", ASTERISK_SIDE, ids=lambda p: p.name)
def test_asterisk_side_sessions_replay(path):
    env, pairs = asterisk_side(path)
    engine = CommandEngine(channel_from_env(env))
    assert pairs
    for command, response in pairs:
        if not response:
            continue  # the script was killed before Asterisk answered (04) or no answer logged
        got = engine.handle(command)
        assert got == response.replace("\nHANGUP\n", "\n"), command


@pytest.mark.parametrize("line, argv", [
    ('SET VARIABLE WITH_SPACES "a b \\"quoted\\" c"', ["SET", "VARIABLE", "WITH_SPACES", 'a b "quoted" c']),
    ('SET VARIABLE EMPTY ""', ["SET", "VARIABLE", "EMPTY", ""]),
    ("SET VARIABLE UNQUOTED two words", ["SET", "VARIABLE", "UNQUOTED", "two", "words"]),
    ('STREAM FILE beep ""', ["STREAM", "FILE", "beep", ""]),
])
def test_command_parser_matches_res_agi(line, argv):
    assert parse_args(line) == argv


def test_dead_channel_permissions_follow_agi_show_commands():
    table = (TRANSCRIPTS / "17-agi-show-commands.txt").read_text().splitlines()
    engine = CommandEngine(Channel())
    engine.channel.alive = False
    rows = [re.match(r"\s*(Yes|No)\s+(.+?)\s{2,}", r) for r in table[1:]]
    rows = [r for r in rows if r]
    assert len(rows) > 40
    for r in rows:
        dead_ok, words = r.group(1) == "Yes", r.group(2)
        response = engine.handle(words.upper() + " x y z")
        assert response.startswith("511") != dead_ok, words
