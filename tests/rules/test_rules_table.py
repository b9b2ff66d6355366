"""One source of truth for the rules: the RULES table of rpo_guard.rules.decision.

Every reason code has an entry (a new reason fails here until it has one), the table agrees
with the decision sets, and what `audit show`, the HTML report and docs/dialplan.md say about
the rules is rendered from it.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rpo_guard.rules import decision
from rpo_guard.rules.decision import ALLOW, ALLOW_REASONS, BLOCK, BLOCK_REASONS, REASONS, RULES, rule_line

ROOT = Path(__file__).resolve().parents[2]


def test_every_reason_code_has_a_rule_and_no_more():
    assert set(RULES) == set(REASONS), (
        f"reasons without a RULES entry: {sorted(set(REASONS) - set(RULES))}; "
        f"entries that are no reason: {sorted(set(RULES) - set(REASONS))}")


def test_rules_agree_with_the_decision_sets():
    for reason, rule in RULES.items():
        assert rule.decision == (ALLOW if reason in ALLOW_REASONS else BLOCK), reason
        assert reason in ALLOW_REASONS or reason in BLOCK_REASONS
        assert rule.text and rule.source, reason


def test_rule_numbers_are_unique_and_in_the_order_they_apply():
    numbers = [r.number for r in RULES.values()]
    assert len(set(numbers)) == len(numbers)
    keys = [(int(re.match(r"\d+", n).group()), n) for n in numbers if n != "–"]
    assert keys == sorted(keys), "RULES must list the rules in the order decide() applies them"
    assert numbers[-1] == "–" and list(RULES)[-1] == decision.ERROR


def test_decide_docstring_numbers_match():
    doc = decision.decide.__doc__
    for reason, rule in RULES.items():
        if rule.number == "–":
            continue
        m = re.search(rf"^\s*{int(re.match(r'[0-9]+', rule.number).group())}\.\s", doc, re.M)
        assert m, f"decide()'s docstring lacks rule {rule.number}"
        block = doc[m.start():]
        nxt = re.search(r"^\s*\d+\.\s", block[m.end() - m.start():], re.M)
        section = block[: (m.end() - m.start()) + (nxt.start() if nxt else len(block))]
        assert reason in section, f"decide()'s docstring puts {reason} elsewhere than rule {rule.number}"


def test_docs_table_is_the_generated_one():
    generated = subprocess.run([sys.executable, "-m", "rpo_guard.rules.decision", "--markdown"],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert generated.splitlines()[0].startswith("| # | rule |") and len(generated.splitlines()) == len(RULES) + 2
    page = (ROOT / "docs" / "dialplan.md").read_text(encoding="utf-8")
    assert generated in page, ("docs/dialplan.md's rules table differs from "
                               "`python -m rpo_guard.rules.decision --markdown`: paste the new one")


def test_docs_rule_references_exist():
    """`rule 11b`, `rules 4–6` and the like in the docs name rules that exist."""
    numbers = {r.number for r in RULES.values()}
    bad = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"\brules? (\d+[a-c]?)(?:\s*(?:–|-|to)\s*(\d+[a-c]?))?", text):
            for n in filter(None, m.groups()):
                if n not in numbers and not any(x.startswith(n) for x in numbers):
                    bad.append(f"{page.name}: {m.group(0)!r}")
    assert not bad, bad


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_audit_show_states_the_rule(reason):
    line = rule_line(reason)
    rule = RULES[reason]
    assert "unknown reason code" not in line and rule.text in line and rule.source in line
    assert ("allowed" if rule.decision == ALLOW else "refused") in line


def test_audit_show_prints_the_rule_for_each_reason(tmp_path):
    """Through the real command, on rows of every reason, including the conduct-code ones."""
    from audit_helpers import make_row

    from rpo_guard.audit.log import AuditLog
    db = tmp_path / "audit.db"
    log = AuditLog(str(db))
    reasons = sorted(REASONS)
    try:
        ids = log.append_many([make_row(i, reason=r, decision=RULES[r].decision) for i, r in enumerate(reasons)])
    finally:
        log.close()
    conf = tmp_path / "rpo-guard.conf"
    conf.write_text(f"[paths]\ndata_dir = {tmp_path}\n")
    exe = str(Path(sys.executable).parent / "rpo-guard")
    for row_id, reason in zip(ids, reasons):
        r = subprocess.run([exe, "--config", str(conf), "audit", "show", str(row_id)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"  rule:     {rule_line(reason)}" in r.stdout.splitlines(), r.stdout


def test_report_coverage_text_and_colours_come_from_the_table():
    from rpo_guard.audit import report
    assert report._coverage_rules() == (f"rules {RULES[decision.NOT_CONSULTED].number}–"
                                        f"{RULES[decision.NOT_REGISTERED].number}: every valid number not "
                                        f"settled earlier by rules 1–{int(RULES[decision.NOT_CONSULTED].number) - 1}")
    assert set(report.ALLOW_ORDER) | set(report.BLOCK_ORDER) == set(REASONS)
    assert set(report.COLOURS) == set(REASONS), "every reason needs a colour of its own in the report"
