"""The shipped dialplan fails closed: checked line by line, since Asterisk cannot run here."""
import re
from pathlib import Path

DIALPLAN = Path(__file__).resolve().parents[1] / "dialplan"


def context(text: str, name: str) -> list[str]:
    body = text.split(f"[{name}]", 1)[1].split("\n[", 1)[0]
    return [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith(";")]


def test_subroutine_clears_result_before_the_agi_and_allows_only_success_and_allow():
    lines = context((DIALPLAN / "rpo-guard.conf").read_text(), "rpo-guard-check")
    agi = next(i for i, line in enumerate(lines) if "AGI(" in line)
    assert "AGI(${RPO_GUARD_AGI},${ARG1},${ARG2})" in lines[agi]   # the path is a global, not hard-coded
    before = lines[:agi]
    assert any(re.search(r"Set\(RPO_RESULT=\)$", line) for line in before)
    assert any(re.search(r"Set\(RPO_REASON=\)$", line) for line in before)
    assert any("Set(AGISIGHUP=no)" in line for line in before)
    gotoif = lines[agi + 1]
    assert gotoif == 'same => n,GotoIf($["${AGISTATUS}" = "SUCCESS" & "${RPO_RESULT}" = "ALLOW"]?allow)'
    # Everything between the test and the allow label forces BLOCK, then returns.
    fall_through = lines[agi + 2:lines.index(next(line for line in lines if "(allow)" in line))]
    assert any(line.endswith("Set(RPO_RESULT=BLOCK)") for line in fall_through)
    assert fall_through[-1].endswith("Return()")


def test_global_agi_path_is_defined():
    text = (DIALPLAN / "rpo-guard.conf").read_text()
    assert re.search(r"^\[globals\]\s*\n(;.*\n)*RPO_GUARD_AGI=/", text, re.M)


def test_example_dials_only_on_allow_and_rejects_with_cause_21():
    lines = context((DIALPLAN / "rpo-guard.conf").read_text(), "rpo-guard-outbound-example")
    assert "Gosub(rpo-guard-check,s,1(${EXTEN},${RPO_BRAND}))" in lines[0]
    assert lines[1].endswith('GotoIf($["${RPO_RESULT}" = "ALLOW"]?dial)')
    assert lines[2].endswith("Hangup(21)")
    assert "(dial),Dial(" in lines[3]


def test_freepbx_hook_bypasses_the_trunk_unless_allowed():
    lines = context((DIALPLAN / "freepbx-predial-hook.conf").read_text(), "macro-dialout-trunk-predial-hook")
    assert "Gosub(rpo-guard-check,s,1(${OUTNUM},${RPO_BRAND}))" in lines[0]
    assert lines[1].endswith('GotoIf($["${RPO_RESULT}" = "ALLOW"]?done)')
    assert lines[2].endswith("Set(PREDIAL_HOOK_RET=BYPASS)")
    assert lines[3].endswith("Hangup(21)")
