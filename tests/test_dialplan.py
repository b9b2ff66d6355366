"""The shipped dialplan fails closed, checked line by line (the same files run in a real
Asterisk in tests/test_asterisk_*.py when one is here)."""
import re
from pathlib import Path

DIALPLAN = Path(__file__).resolve().parents[1] / "dialplan"


def context(text: str, name: str) -> list[str]:
    body = text.split(f"[{name}]", 1)[1].split("\n[", 1)[0]
    return [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith(";")]


def test_subroutine_clears_result_before_the_agi_and_allows_only_success_and_allow():
    lines = context((DIALPLAN / "rpo-guard.conf").read_text(), "rpo-guard-check")
    agi = next(i for i, line in enumerate(lines) if "AGI(" in line)
    assert "AGI(${agi},${ARG1},${ARG2})" in lines[agi]   # the path: the admin's global, else the default
    before = lines[:agi]
    assert any("Set(LOCAL(agi)=${RPO_GUARD_AGI})" in line for line in before)
    assert any(re.search(r"Set\(RPO_RESULT=\)$", line) for line in before)
    assert any(re.search(r"Set\(RPO_REASON=\)$", line) for line in before)
    assert any("Set(AGISIGHUP=no)" in line for line in before)
    gotoif = lines[agi + 1]
    assert gotoif == 'same => n,GotoIf($["${AGISTATUS}" = "SUCCESS" & "${RPO_RESULT}" = "ALLOW"]?allow)'
    # Everything between the test and the allow label forces BLOCK, then returns.
    fall_through = lines[agi + 2:lines.index(next(line for line in lines if "(allow)" in line))]
    assert any(line.endswith("Set(RPO_RESULT=BLOCK)") for line in fall_through)
    assert fall_through[-1].endswith("Return(BLOCK)")


def test_default_agi_path_only_when_the_global_is_unset():
    lines = context((DIALPLAN / "rpo-guard.conf").read_text(), "rpo-guard-check")
    i = lines.index('same => n,GotoIf($["${agi}" != ""]?run)')
    assert lines[i + 1] == "same => n,Set(agi=/usr/local/bin/rpo-guard-agi)"


def test_example_dials_only_on_allow_and_rejects_with_cause_21():
    lines = context((DIALPLAN / "rpo-guard.conf").read_text(), "rpo-guard-outbound-example")
    assert "Gosub(rpo-guard-check,s,1(${EXTEN},${RPO_BRAND}))" in lines[0]
    assert lines[1].endswith('GotoIf($["${RPO_RESULT}" = "ALLOW"]?dial)')
    assert lines[2].endswith("Hangup(21)")
    assert "(dial),Dial(" in lines[3]


def test_freepbx_hook_bypasses_the_trunk_unless_allowed():
    lines = context((DIALPLAN / "freepbx-predial-hook.conf").read_text(), "macro-dialout-trunk-predial-hook")
    assert "Gosub(rpo-guard-check,s,1(${OUTNUM},${RPO_BRAND}))" in lines[0]
    assert lines[1].endswith('GotoIf($["${RPO_RESULT}" = "ALLOW"]?allowed)')
    assert lines[2].endswith("Set(PREDIAL_HOOK_RET=BYPASS)")
    assert lines[3].endswith("Hangup(21)")
