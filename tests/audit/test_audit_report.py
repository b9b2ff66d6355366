"""``rpo-guard audit report``: one self-contained HTML file, checked in a real browser."""
from __future__ import annotations

import os
import re
import subprocess
from collections import Counter

import pytest
from audit_helpers import fill, make_row, raw
from click.testing import CliRunner
from png_read import colour_counts

from rpo_guard.audit.report import COLOURS
from rpo_guard.cli.main import cli

CHROMIUM = "/usr/bin/chromium"


def report(env, out, *args):
    res = CliRunner().invoke(cli, ["--config", str(env.conf), "audit", "report", "--out", str(out), *args],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out.read_text(encoding="utf-8")


@pytest.fixture
def filled(env):
    env.data.mkdir(parents=True)
    fill(env.cfg.audit_db, 600)
    return env


def groups(n=600):
    return Counter((make_row(i)["at"][:10], make_row(i)["decision"], make_row(i)["reason"]) for i in range(n))


def test_report_is_self_contained_and_holds_the_figures(filled, tmp_path):
    html = report(filled, tmp_path / "r.html")
    # nothing to fetch: no external scripts, styles, images or fonts
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//)""", html, re.I)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert html.count('<svg id="chart"') == 1
    bars = re.findall(r'<rect class="bar"[^>]*data-day="([^"]+)" data-reason="([^"]+)" data-n="(\d+)"', html)
    expect = groups()
    assert len(bars) == len(expect)
    assert Counter({(d, r): int(n) for d, r, n in bars}) == Counter({(d, r): n for (d, _dec, r), n in expect.items()})
    assert '<b id="total">600</b>' in html
    assert 'id="verify" class="verify ok"' in html and "OK: 600 rows intact" in html
    covered = sum(n for (_d, _dec, r), n in expect.items() if r in ("not_registered", "consent", "consent_revoked", "rpo_registered"))
    needing = covered + sum(n for (_d, _dec, r), n in expect.items() if r in ("not_consulted", "consultation_expired"))
    assert f'<b id="coverage">{100 * covered / needing:.1f}%</b>{covered} of {needing}' in html
    # filters narrow the report; a broken log says so
    html = report(filled, tmp_path / "r2.html", "--since", "2026-10-03", "--until", "2026-10-03")
    assert set(re.findall(r'data-day="([^"]+)"', html)) == {"2026-10-03"}
    w = raw(filled.cfg.audit_db)
    w.execute("DROP TRIGGER attempts_no_delete")
    w.execute("DELETE FROM attempts WHERE id = 300")
    html = report(filled, tmp_path / "r3.html")
    assert 'class="verify bad"' in html and "BROKEN at row 301: deleted" in html


def _chromium(args, tmp_path):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path)))


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} not found: the HTML report is not checked in a real browser here "
                           "(install the Debian package `chromium` to run this test)")
def test_report_renders_in_headless_chromium(filled, tmp_path):
    page = tmp_path / "report.html"
    report(filled, page)
    url = page.resolve().as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path).stdout.decode()
    m = re.search(r'<svg id="chart"[^>]*data-rendered="(\d+)x(\d+) bars=(\d+)"', dom)
    assert m, "the chart was not laid out (no data-rendered attribute after load)"
    width, height, painted = map(int, m.groups())
    assert width >= 400 and height >= 300
    assert painted == len(groups())  # every bar has a non-empty box in the browser
    shot = tmp_path / "report.png"
    _chromium(["--window-size=1100,900", f"--screenshot={shot}", url], tmp_path)
    assert shot.is_file(), "no screenshot"
    w, h, colours = colour_counts(shot.read_bytes())
    assert (w, h) == (1100, 900)
    present = {r for (_d, _dec, r) in groups()}
    for reason in present:
        # bars, not just the 12x12 legend swatch
        assert colours[COLOURS[reason].lstrip("#")] > 1000, (reason, colours[COLOURS[reason].lstrip("#")])


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def test_each_reason_has_a_colour_of_its_own():
    """Every reason code (conduct ones and invalid_number included) has its colour, and no two
    are near: at least 60 apart in RGB space, and none a grey but error's black."""
    from itertools import combinations
    from math import dist

    from rpo_guard.rules.decision import REASONS
    assert set(COLOURS) == set(REASONS)
    near = [(a, b, round(dist(_rgb(COLOURS[a]), _rgb(COLOURS[b]))))
            for a, b in combinations(sorted(COLOURS), 2) if dist(_rgb(COLOURS[a]), _rgb(COLOURS[b])) < 60]
    assert not near, near
    greys = [r for r, c in COLOURS.items() if r != "error" and max(_rgb(c)) - min(_rgb(c)) < 24]
    assert not greys, greys


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} not found: the HTML report is not checked in a real browser here "
                           "(install the Debian package `chromium` to run this test)")
def test_every_reason_shows_in_its_own_colour_in_chromium(env, tmp_path):
    """A log holding every reason: each one's colour covers bars in the screenshot."""
    from datetime import datetime

    from audit_helpers import ROME
    from rpo_guard.audit.log import AuditLog
    from rpo_guard.rules.decision import REASONS, RULES
    env.data.mkdir(parents=True)
    log = AuditLog(env.cfg.audit_db)
    rows = []
    for day in (1, 2, 3):
        for k, reason in enumerate(sorted(REASONS)):
            for j in range(20):
                at = datetime(2026, 10, day, 9 + j % 8, k, tzinfo=ROME)
                rows.append(make_row(len(rows), at=at, reason=reason, decision=RULES[reason].decision,
                                     e164="+390612345678"))
    try:
        log.append_many(rows)
    finally:
        log.close()
    page = tmp_path / "report.html"
    report(env, page)
    shot = tmp_path / "report.png"
    _chromium(["--window-size=1100,900", f"--screenshot={shot}", page.resolve().as_uri()], tmp_path)
    _w, _h, colours = colour_counts(shot.read_bytes())
    thin = {r: colours[COLOURS[r].lstrip("#")] for r in REASONS if colours[COLOURS[r].lstrip("#")] < 1000}
    assert not thin, f"reasons whose colour covers no bar in the screenshot: {thin}"
