"""The auditor's commands on the fleet's central trail: `audit list`, `export`, `summary` and
`report` with --central give what the boxes' own audit.db files give, together, each row naming
its box. Two boxes, their rows shipped by the real agent to a real PostgreSQL."""
from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta

import pytest

from audit_helpers import ROME, make_row
from fleet_support import Box
from rpo_guard.audit.log import COLUMNS, AuditLog, row_hash
from rpo_guard.audit.query import EXPORT_COLUMNS

START = datetime(2026, 10, 24, 20, 0, tzinfo=ROME)  # the rows run across the October DST change
SIMULATED = {"a": 3, "b": 0}
SELFTEST = {"a": 0, "b": 2}


def rows_of(name: str) -> list[dict]:
    """Box a: 40 attempts every 37 minutes, 3 of them simulate-call's; box b: 25 every 53 minutes
    from 5 minutes later, 2 of them selftest calls. The same numbers, caller IDs and uniqueids
    occur on both boxes, and their ids overlap: only the box tells the rows apart."""
    if name == "a":
        return [make_row(i, at=START + timedelta(minutes=37 * i),
                         **({"via": "simulate"} if i in (4, 11, 30) else {})) for i in range(40)]
    return [make_row(i, at=START + timedelta(minutes=5 + 53 * i),
                     **({"via": "agi-selftest"} if i in (2, 9) else {})) for i in range(25)]


@pytest.fixture(scope="module")
def fleet(cluster, tmp_path_factory):
    central = cluster.new_database()
    root = tmp_path_factory.mktemp("central-audit")
    boxes = {}
    for name in ("a", "b"):
        (root / name).mkdir()
        box = boxes[name] = Box(root / name, name, central).init()
        log = AuditLog(box.cfg.audit_db)
        log.append_many(rows_of(name))
        log.close()
        r = box.cli("fleet", "agent", "--once")  # one round of the real agent ships the rows
        assert r.returncode == 0, r.stderr
    return boxes


def ok(r):
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return r


def jsonl(text: str) -> list[dict]:
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def union(fleet, *args) -> list[dict]:
    """Each box's own `audit list --json`, with its box, in the centre's order (time, box, id)."""
    rows = [{"box": name, **r} for name, box in fleet.items()
            for r in jsonl(ok(box.cli("audit", "list", "--limit", "0", "--json", *args)).stdout)]
    return sorted(rows, key=lambda r: (r["at_utc"], r["box"], r["id"]))


def central_list(fleet, *args) -> list[dict]:
    return jsonl(ok(fleet["a"].cli("audit", "list", "--central", "--limit", "0", "--json", *args)).stdout)


FILTERS = [
    (),
    ("--since", "2026-10-25", "--until", "2026-10-25"),                        # the DST day, inclusive
    ("--since", "2026-10-25T02:30:00+02:00", "--until", "2026-10-25T02:30:00+01:00"),  # the repeated hour
    ("--number", "333 0000003"),
    ("--brand", "Telco Due", "--decision", "block"),
    ("--reason", "consent", "--reason", "internal_dnc"),
    ("--caller-id", "0600000003"),
    ("--uniqueid", "1795000004.4"),
]


@pytest.mark.parametrize("args", FILTERS, ids=lambda a: " ".join(a) or "no filter")
def test_list_central_is_the_union_of_the_boxes_lists(fleet, args):
    expected = union(fleet, *args)
    assert expected, "the filter should match rows of the fixture"
    assert central_list(fleet, *args) == expected


def test_the_fixture_rows_reach_both_boxes_lists_and_overlap(fleet):
    every = union(fleet)
    assert len(every) == 65 and {r["box"] for r in every} == {"a", "b"}
    # the same ids on both boxes, and the two boxes' rows interleave in time
    assert {r["id"] for r in every if r["box"] == "a"} >= {r["id"] for r in every if r["box"] == "b"}
    boxes_in_order = [r["box"] for r in every]
    assert sum(1 for x, y in zip(boxes_in_order, boxes_in_order[1:]) if x != y) > 10
    # the DST day filtered as moments: the repeated 02:xx hour appears with both offsets
    dst = union(fleet, "--since", "2026-10-25", "--until", "2026-10-25")
    assert {r["at"][-6:] for r in dst} == {"+02:00", "+01:00"}


def test_box_filter_gives_that_box_alone(fleet):
    for name in ("a", "b"):
        own = [{"box": name, **r} for r in jsonl(ok(fleet[name].cli("audit", "list", "--limit", "0", "--json")).stdout)]
        assert central_list(fleet, "--box", name) == own
    both = central_list(fleet, "--box", "b", "--decision", "ALLOW")
    assert both and both == [r for r in union(fleet, "--decision", "ALLOW") if r["box"] == "b"]


def test_list_limit_and_text_lines_name_the_box(fleet):
    every = union(fleet)
    newest = jsonl(ok(fleet["b"].cli("audit", "list", "--central", "--limit", "7", "--json")).stdout)
    assert newest == every[-7:]
    r = ok(fleet["b"].cli("audit", "list", "--central", "--limit", "0"))
    lines = r.stdout.splitlines()
    assert len(lines) == 65 and "(65 attempts)" in r.stderr
    for line, row in zip(lines, every):
        box, row_id, at = line.split()[:3]
        assert (box, int(row_id), at) == (row["box"], row["id"], row["at"])
    # the single-box default (--limit 100) is the central default too
    assert len(ok(fleet["a"].cli("audit", "list", "--central")).stdout.splitlines()) == 65


def _csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_export_central_csv_is_each_box_export_with_its_box(fleet, tmp_path):
    out = tmp_path / "fleet.csv"
    r = ok(fleet["a"].cli("audit", "export", "--central", "--out", str(out)))
    assert f"exported 65 attempts to {out}" in r.stderr
    table = _csv(out.read_text(encoding="utf-8"))
    assert table[0] == ["box", *EXPORT_COLUMNS]
    assert len(table) == 1 + 65
    for name, box in fleet.items():
        own = _csv(ok(box.cli("audit", "export", "--format", "csv")).stdout)
        assert [row[1:] for row in table[1:] if row[0] == name] == own[1:]  # every field, as text


def test_export_central_jsonl_with_filters(fleet):
    args = ("--decision", "ALLOW", "--since", "2026-10-25T06:00")
    r = ok(fleet["b"].cli("audit", "export", "--central", "--format", "jsonl", *args))
    got = jsonl(r.stdout)
    own = {name: jsonl(ok(box.cli("audit", "export", "--format", "jsonl", *args)).stdout) for name, box in fleet.items()}
    assert len(got) == sum(len(v) for v in own.values()) > 0 and f"exported {len(got)} attempts" in r.stderr
    for name, rows in own.items():
        assert [{k: v for k, v in g.items() if k != "box"} for g in got if g["box"] == name] == rows
    assert all(list(g) == ["box", *EXPORT_COLUMNS] for g in got)
    assert all(g["decision"] == "ALLOW" for g in got)
    only_a = jsonl(ok(fleet["b"].cli("audit", "export", "--central", "--box", "a", "--format", "jsonl", *args)).stdout)
    assert only_a == [g for g in got if g["box"] == "a"]


def test_export_central_carries_every_hashed_column(fleet):
    """Each box's chain recomputes from the central export alone, as from a box's own export."""
    got = jsonl(ok(fleet["a"].cli("audit", "export", "--central", "--format", "jsonl")).stdout)
    for name in fleet:
        prev, rows = "0" * 64, sorted((g for g in got if g["box"] == name), key=lambda g: g["id"])
        assert [g["id"] for g in rows] == list(range(1, len(rows_of(name)) + 1))
        for g in rows:
            assert g["prev_hash"] == prev and row_hash(prev, g["id"], [g[c] for c in COLUMNS]) == g["hash"]
            prev = g["hash"]


def test_summary_central_is_each_box_summary_without_simulated_or_selftest_calls(fleet):
    for args in ((), ("--brand", "Energia Uno"), ("--box", "b", "--until", "2026-10-25")):
        box_args = [a for a in args if a not in ("--box", "b")]
        names = ["b"] if "--box" in args else ["a", "b"]
        expected = sorted(({"box": n, **g} for n in names
                           for g in json.loads(ok(fleet[n].cli("audit", "summary", "--json", *box_args)).stdout)),
                          key=lambda g: (g["box"], g["day"], g["brand"], g["decision"], g["reason"]))
        got = json.loads(ok(fleet["a"].cli("audit", "summary", "--central", "--json", *args)).stdout)
        assert got == expected and got
    every = json.loads(ok(fleet["a"].cli("audit", "summary", "--central", "--json")).stdout)
    for name in fleet:
        n = sum(g["attempts"] for g in every if g["box"] == name)
        assert n == len(rows_of(name)) - SIMULATED[name] - SELFTEST[name]
    text = ok(fleet["a"].cli("audit", "summary", "--central")).stdout
    assert text.splitlines()[0].split()[:3] == ["box", "day", "brand"]
    assert re.search(r"^box a: total 37: \d+ allowed, \d+ refused$", text, re.M)
    assert re.search(r"^box b: total 23: ", text, re.M) and re.search(r"^total 60: ", text, re.M)
    assert "3 simulated calls" in text


def _cell(html: str, box: str) -> list[str]:
    row = re.search(rf'<tr data-box="{box}">(.*?)</tr>', html)
    assert row, f"no row of box {box} in the report"
    return re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))


def test_report_central_counts_per_box_and_verifies_each_chain(fleet, tmp_path):
    out = tmp_path / "fleet.html"
    r = ok(fleet["b"].cli("audit", "report", "--central", "--out", str(out), "--title", "Fleet audit"))
    assert "60 attempts" in r.stdout and "2 box chain(s) intact" in r.stdout
    page = out.read_text(encoding="utf-8")
    assert "<h1>Fleet audit</h1>" in page and 'id="total">60<' in page
    for name, box in fleet.items():
        own = json.loads(ok(box.cli("audit", "summary", "--json")).stdout)
        cells = _cell(page, name)
        assert cells[0] == name
        assert int(cells[1]) == sum(g["attempts"] for g in own)
        assert int(cells[2]) == sum(g["attempts"] for g in own if g["decision"] == "ALLOW")
        assert int(cells[3]) == sum(g["attempts"] for g in own if g["decision"] == "BLOCK")
        assert cells[5] == f"intact, {len(rows_of(name))} rows"
        assert re.search(rf'data-box="{name}">✔ box {name}: OK: {len(rows_of(name))} rows intact', page)
    assert "3 simulated calls" in page
    # one box, one day: the report's own numbers are that box's, from its own audit.db
    r = ok(fleet["a"].cli("audit", "report", "--central", "--box", "a", "--since", "2026-10-25",
                          "--until", "2026-10-25", "--out", str(out)))
    page = out.read_text(encoding="utf-8")
    own = json.loads(ok(fleet["a"].cli("audit", "summary", "--json", "--since", "2026-10-25",
                                       "--until", "2026-10-25")).stdout)
    assert f'id="total">{sum(g["attempts"] for g in own)}<' in page and 'data-box="b"' not in page
    assert int(_cell(page, "a")[1]) == sum(g["attempts"] for g in own)


def test_report_central_names_the_box_whose_chain_is_broken(make_box, central, tmp_path):
    psycopg = pytest.importorskip("psycopg")
    a, b = make_box("a"), make_box("b")
    for box in (a, b):
        log = AuditLog(box.cfg.audit_db)
        log.append_many([make_row(i) for i in range(6)])
        log.close()
        ok(box.cli("fleet", "agent", "--once"))
    with psycopg.connect(central) as conn:
        conn.execute("UPDATE box_attempts SET detail = 'changed' WHERE box = 'b' AND id = 4")
    out = tmp_path / "r.html"
    r = ok(a.cli("audit", "report", "--central", "--out", str(out)))
    assert "trail BROKEN (box b)" in r.stdout
    page = out.read_text(encoding="utf-8")
    assert 'id="verify" class="verify bad"' in page and _cell(page, "b")[5] == "BROKEN at row 4"
    assert _cell(page, "a")[5] == "intact, 6 rows"


def test_an_unknown_box_is_named_with_the_boxes_there_are(fleet):
    r = fleet["a"].cli("audit", "list", "--central", "--box", "zz")
    assert r.returncode == 1 and "--box zz: no such box" in r.stderr and "a, b" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", [("list",), ("export",), ("summary",), ("report", "--out", "r.html")])
def test_central_without_fleet_mode_names_the_setting(tmp_path, command):
    conf = tmp_path / "rpo-guard.conf"
    conf.write_text(f"[paths]\ndata_dir = {tmp_path / 'data'}\nlog_file = {tmp_path / 'failures.log'}\n")
    box = Box.__new__(Box)  # a single box: the same command line, no [fleet] section
    box.conf = conf
    r = box.cli("audit", *command, "--central")
    assert r.returncode == 2 and "[fleet] central" in r.stderr and "Traceback" not in r.stderr
    r = box.cli("audit", *command, "--box", "a")
    assert r.returncode == 2 and "--box" in r.stderr and "--central" in r.stderr


def test_an_unreachable_centre_is_a_clear_error(tmp_path):
    pytest.importorskip("psycopg", reason="psycopg (3) is not installed: pip install 'rpo_guard[fleet]'")
    conf = tmp_path / "rpo-guard.conf"
    conf.write_text(f"[paths]\ndata_dir = {tmp_path / 'data'}\nlog_file = {tmp_path / 'failures.log'}\n"
                    f"[fleet]\ncentral = host={tmp_path} dbname=nowhere user=postgres\nbox = a\n")
    box = Box.__new__(Box)
    box.conf = conf
    for command in (("list",), ("export",), ("summary",), ("report", "--out", str(tmp_path / "r.html"))):
        r = box.cli("audit", *command, "--central")
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "[fleet] central" in r.stderr and "central database unreachable" in r.stderr
    assert not (tmp_path / "r.html").exists()
