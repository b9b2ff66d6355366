"""The shipped dialplan's layout in a real Asterisk: the FreePBX hook, where the settings go,
one reason per failure through both subroutines.

* FreePBX 17 (Asterisk 21+, no app_macro) enters the predial hook with
  ``Gosub(macro-dialout-trunk-predial-hook,s,1())`` (framework's ext_macro writes every
  Macro as a Gosub) and expects ``Return()``; FreePBX 16 enters it with ``Macro``.
* The admin's ``RPO_GUARD_AGI`` / ``RPO_GUARD_FASTAGI`` in [globals] wins wherever it is
  written, before or after the ``#include``.
"""
from __future__ import annotations

import socket

import pytest

from asterisk_calls import DIALPLAN, OUTBOUND, assert_refused, audit_row, includes, place
from conftest import Env, agi_path
from fastagi_support import Server

pytestmark = pytest.mark.asterisk

FREE, REGISTERED = "0612345678", "3331234567"
ROME_LINE = "0612340000"

# What FreePBX 17 generates around the hook (core's functions.inc.php, macro-dialout-trunk,
# as framework's ext_macro/ext_macroexit write it: Gosub ... Return), cut to the lines that
# matter here; the trunk is the sandbox's sink.
FREEPBX17_DIALOUT = r"""
[macro-dialout-trunk]
exten => s,1,Set(DIAL_TRUNK=${ARG1})
 same => n,Set(DIAL_NUMBER=${ARG2})
 same => n,Set(OUTNUM=${DIAL_NUMBER})
 same => n(gocall),Gosub(macro-dialout-trunk-predial-hook,s,1())
 same => n,GotoIf($["${PREDIAL_HOOK_RET}" = "BYPASS"]?bypass,1)
 same => n,Dial(Local/${OUTNUM}@sandbox-sink,300)
 same => n,Return()
exten => bypass,1,NoOp(TRUNK: ${DIAL_TRUNK} BYPASSING because dialout-trunk-predial-hook)

[outrt-1]
exten => s,1,Set(ENV(RPO_GUARD_CONFIG)=${RPO_TEST_CONFIG})
 same => n,Gosub(macro-dialout-trunk,s,1(1,${DIALED},,off))
 same => n,Hangup()
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    env = Env(tmp_path_factory.mktemp("dialplan"))
    env.init()
    env.consult([(FREE, "non iscritto"), (REGISTERED, "iscritto")])
    return env


def test_freepbx17_hook_entered_with_gosub(asterisk_sandbox, data):
    mark = asterisk_sandbox.log_mark()
    asterisk_sandbox.load_dialplan(includes("rpo-guard.conf", "freepbx-predial-hook.conf")
                                   + f"[globals]\nRPO_GUARD_AGI={agi_path()}\n" + FREEPBX17_DIALOUT)
    allowed = asterisk_sandbox.originate("s", "outrt-1", variables={
        "DIALED": FREE, "RPO_TEST_CONFIG": str(data.conf)}, callerid=ROME_LINE)
    blocked = asterisk_sandbox.originate("s", "outrt-1", variables={
        "DIALED": REGISTERED, "RPO_TEST_CONFIG": str(data.conf)}, callerid=ROME_LINE)
    a, b = asterisk_sandbox.wait_for(allowed), asterisk_sandbox.wait_for(blocked)
    log = asterisk_sandbox.log_since(mark)
    assert "No application 'MacroExit'" not in log and "Return without Gosub" not in log
    assert (a["RPO_RESULT"], a["RPO_REASON"], a["DIALSTATUS"]) == ("ALLOW", "not_registered", "ANSWER"), a
    assert asterisk_sandbox.sink_hits(allowed) == [FREE]
    assert (b["RPO_RESULT"], b["RPO_REASON"], b["PREDIAL_HOOK_RET"], b["HANGUPCAUSE"]) == \
           ("BLOCK", "rpo_registered", "BYPASS", "21"), b
    assert_refused(asterisk_sandbox, blocked, b)
    assert audit_row(data, b["RPO_AUDIT_ID"])["reason"] == "rpo_registered"


def test_freepbx16_hook_shape():
    """Asterisk 22 has no app_macro, so the Macro entry is checked on the text: entered with
    Macro (MACRO_CONTEXT set), an allowed call ends the macro by running out of priorities
    (what MacroExit does), never with Return (which would hang up: no Gosub frame)."""
    text = (DIALPLAN / "freepbx-predial-hook.conf").read_text()
    body = [line.split(";")[0].strip() for line in text.split("[macro-dialout-trunk-predial-hook]", 1)[1].splitlines()]
    body = [line for line in body if line]
    macro = next(i for i, line in enumerate(body) if "(macro)" in line)
    assert any('GotoIf($["${MACRO_CONTEXT}" != ""]?macro)' in line for line in body[:macro])
    assert body[macro - 1].endswith("Return()")  # the Gosub entry returns just before the macro label
    assert not any("Return" in line or "Goto" in line for line in body[macro:])  # the macro ends by itself
    assert "MacroExit" not in text.split("[macro-dialout-trunk-predial-hook]", 1)[1].split(";")[0]


def test_freepbx16_macro_shaped_entry_ends_without_return(asterisk_sandbox, data):
    """As close to Macro as Asterisk 22 allows: MACRO_CONTEXT set as app_macro sets it, the
    hook run in line; an allowed call goes to the macro's end and not to Return()."""
    mark = asterisk_sandbox.log_mark()
    asterisk_sandbox.load_dialplan(includes("rpo-guard.conf", "freepbx-predial-hook.conf")
                                   + f"[globals]\nRPO_GUARD_AGI={agi_path()}\n" + r"""
[macro16]
exten => s,1,Set(ENV(RPO_GUARD_CONFIG)=${RPO_TEST_CONFIG})
 same => n,Set(OUTNUM=${DIALED})
 same => n,Set(MACRO_CONTEXT=macro-dialout-trunk)
 same => n,Goto(macro-dialout-trunk-predial-hook,s,1)
""")
    c = asterisk_sandbox.originate("s", "macro16", variables={"DIALED": FREE, "RPO_TEST_CONFIG": str(data.conf)},
                                   callerid=ROME_LINE)
    outcome = asterisk_sandbox.wait_for(c)
    log = asterisk_sandbox.log_since(mark)
    assert outcome["RPO_RESULT"] == "ALLOW"
    assert "Return without Gosub" not in log and "No application" not in log
    assert "Executing [s@macro-dialout-trunk-predial-hook" in log
    assert not any("Return(" in line for line in log.splitlines() if "macro-dialout-trunk-predial-hook" in line)


@pytest.mark.parametrize("where", ["before", "after"])
def test_admin_globals_win_wherever_written(asterisk_sandbox, data, tmp_path, where):
    """The admin's [globals] before or after the #include: the admin's AGI and server run."""
    server = Server(data.conf)
    try:
        settings = f"[globals]\nRPO_GUARD_AGI={agi_path()}\nRPO_GUARD_FASTAGI=agi://127.0.0.1:{server.port}/rpo_guard\n"
        shipped = includes("rpo-guard.conf", "rpo-guard-fastagi.conf")
        asterisk_sandbox.load_dialplan((settings + shipped if where == "before" else shipped + settings) + OUTBOUND)
        for front in ("agi", "fastagi"):
            c = place(asterisk_sandbox, front, FREE, "Energia Uno", data.conf, callerid=ROME_LINE)
            outcome = asterisk_sandbox.wait_for(c)
            assert (outcome["AGISTATUS"], outcome["RPO_RESULT"]) == ("SUCCESS", "ALLOW"), (front, outcome)
            assert audit_row(data, outcome["RPO_AUDIT_ID"])["via"] == front
    finally:
        server.stop()


def test_shipped_files_define_no_global():
    """Nothing in a shipped file can override the admin's settings."""
    for path in DIALPLAN.glob("*.conf"):
        lines = [line.split(";")[0].strip() for line in path.read_text().splitlines()]
        assert "[globals]" not in lines, path.name


def test_same_failure_same_reason_through_both_subroutines(asterisk_sandbox, data, tmp_path):
    """The check could not run (script crashed / server down: AGISTATUS=FAILURE both)."""
    crashing = tmp_path / "agi-crash"
    crashing.write_text("#!/bin/sh\nexit 1\n")
    crashing.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    asterisk_sandbox.load_dialplan(includes("rpo-guard.conf", "rpo-guard-fastagi.conf")
                                   + f"[globals]\nRPO_GUARD_AGI={crashing}\n"
                                     f"RPO_GUARD_FASTAGI=agi://127.0.0.1:{port}/rpo_guard\n" + OUTBOUND)
    seen = {}
    for front in ("agi", "fastagi"):
        c = place(asterisk_sandbox, front, FREE, "Energia Uno", data.conf, callerid=ROME_LINE)
        o = asterisk_sandbox.wait_for(c)
        assert_refused(asterisk_sandbox, c, o)
        seen[front] = (o["AGISTATUS"], o["RPO_RESULT"], o["RPO_REASON"], o["GOSUB_RETVAL"])
    assert seen["agi"] == seen["fastagi"] == ("FAILURE", "BLOCK", "agi_FAILURE", "BLOCK"), seen
