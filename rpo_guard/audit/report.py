"""``rpo-guard audit report``: one self-contained HTML file for auditors.

No network access is needed to view it: the CSS, the chart (inline SVG) and
the few lines of script are in the file itself; nothing is fetched. The
chart shows the attempts per day, allowed above the axis and refused below,
stacked by reason. A report of the fleet's central trail (``audit report --central``)
verifies each box's chain and adds a table of the counts per box.
"""
from __future__ import annotations

import html
import sqlite3
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

from rpo_guard.rules import decision as rules
from rpo_guard.rules.decision import ALLOW_REASONS, RULES

# Reasons in stacking order (the rules' order), each with a colour of its own: allowed in
# greens and blues, refused in reds, oranges, purples and browns; the conduct-code reasons
# too (tests/audit/test_audit_report.py checks they are all told apart, in Chromium).
ALLOW_ORDER = tuple(r for r in RULES if r in ALLOW_REASONS)
BLOCK_ORDER = tuple(r for r in RULES if r not in ALLOW_REASONS)
COLOURS = {
    rules.NOT_REGISTERED: "#2e7d32", rules.CONSENT: "#1565c0", rules.CONTRACT: "#4fc3f7",
    rules.CALLBACK_REQUEST: "#9ccc65",
    rules.RPO_REGISTERED: "#c62828", rules.CONSENT_REVOKED: "#ec407a", rules.OPTOUT: "#6a1b9a",
    rules.INTERNAL_DNC: "#6d4c41", rules.NOT_CONSULTED: "#ef6c00", rules.CONSULTATION_EXPIRED: "#fdd835",
    rules.INVALID_NUMBER: "#bcaaa4", rules.ERROR: "#212121",
    rules.OUTSIDE_CALLING_HOURS: "#7986cb", rules.CALLER_ID_NOT_ALLOWED: "#00897b",
    rules.SILENT_CALL_COOLDOWN: "#9e9d24",
    rules.CONSENT_REQUIRED: "#880e4f", rules.ATTEMPT_CAP: "#546e7a",
    rules.REPLICA_STALE: "#ff7043",
}
UNKNOWN_COLOUR = "#9e9e9e"  # a reason newer than this table (the test makes that a failure)
# Consultation coverage: the rules that read the consultation (not_consulted .. not_registered).
UNCOVERED = frozenset({rules.NOT_CONSULTED, rules.CONSULTATION_EXPIRED})
COVERED = frozenset({rules.CONSENT, rules.CONSENT_REVOKED, rules.RPO_REGISTERED, rules.NOT_REGISTERED})


def _coverage_rules() -> str:
    first = RULES[rules.NOT_CONSULTED].number
    last = RULES[rules.NOT_REGISTERED].number
    earlier = int(first) - 1
    return f"rules {first}–{last}: every valid number not settled earlier by rules 1–{earlier}"


def _order(reason: str) -> tuple:
    if reason in ALLOW_ORDER:
        return (0, ALLOW_ORDER.index(reason))
    if reason in BLOCK_ORDER:
        return (1, BLOCK_ORDER.index(reason))
    return (2, reason)


def _colour(reason: str) -> str:
    return COLOURS.get(reason, UNKNOWN_COLOUR)


def _nice_max(v: int) -> int:
    if v <= 5:
        return 5
    m = 1
    while m * 10 < v:
        m *= 10
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * m >= v:
            return int(step * m)
    return v


def chart_svg(groups: list[dict]) -> str:
    """Diverging stacked bars: per day, allowed reasons up, refused reasons down."""
    days = sorted({g["day"] for g in groups})
    up = defaultdict(lambda: defaultdict(int))
    down = defaultdict(lambda: defaultdict(int))
    for g in groups:
        (up if g["decision"] == "ALLOW" else down)[g["day"]][g["reason"]] += g["attempts"]
    top = _nice_max(max((sum(up[d].values()) for d in days), default=0))
    bottom = _nice_max(max((sum(down[d].values()) for d in days), default=0))
    plot_h, left, right, top_pad, label_h = 320, 64, 16, 16, 70
    slot = max(6, min(48, 900 // max(1, len(days))))
    bar = max(3, int(slot * 0.7))
    width = left + right + slot * max(1, len(days))
    width = max(width, 520)
    scale = plot_h / (top + bottom)
    axis_y = top_pad + top * scale
    height = top_pad + plot_h + label_h
    out = [f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" data-days="{len(days)}" '
           'aria-label="Call attempts per day: allowed above the axis, refused below, by reason">']
    # grid and y labels
    for value, sign in ((top, -1), (top // 2, -1), (bottom // 2, 1), (bottom, 1)):
        y = axis_y + sign * value * scale
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{value}</text>')
    for label, y in (("allowed ↑", axis_y - 8), ("refused ↓", axis_y + 8)):
        out.append(f'<text x="14" y="{y:.1f}" class="tick" text-anchor="{"start" if "allowed" in label else "end"}" '
                   f'transform="rotate(-90 14 {y:.1f})">{label}</text>')
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar) / 2
        y = axis_y
        for reason in sorted(up[day], key=_order):
            n = up[day][reason]
            h = n * scale
            y -= h
            out.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar}" height="{h:.1f}" '
                       f'fill="{_colour(reason)}" data-day="{day}" data-reason="{html.escape(reason)}" data-n="{n}">'
                       f'<title>{day} ALLOW {html.escape(reason)}: {n}</title></rect>')
        y = axis_y
        for reason in sorted(down[day], key=_order):
            n = down[day][reason]
            h = n * scale
            out.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar}" height="{h:.1f}" '
                       f'fill="{_colour(reason)}" data-day="{day}" data-reason="{html.escape(reason)}" data-n="{n}">'
                       f'<title>{day} BLOCK {html.escape(reason)}: {n}</title></rect>')
            y += h
        if len(days) <= 40 or i % max(1, len(days) // 30) == 0:
            lx, ly = x + bar / 2, top_pad + plot_h + 8
            out.append(f'<text x="{lx:.1f}" y="{ly}" class="tick" text-anchor="end" '
                       f'transform="rotate(-60 {lx:.1f} {ly})">{day}</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{axis_y:.1f}" y2="{axis_y:.1f}" stroke="#000"/>')
    out.append("</svg>")
    return "\n".join(out)


def _legend(reasons) -> str:
    items = [f'<span class="key"><i style="background:{_colour(r)}"></i>'
             f'{"ALLOW" if r in ALLOW_REASONS else "BLOCK"} {html.escape(r)}</span>'
             for r in sorted(reasons, key=_order)]
    return '<div class="legend">' + "".join(items) + "</div>"


def _batches(register_db: Path | None) -> list[tuple] | None:
    if register_db is None or not Path(register_db).is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{quote(str(Path(register_db).resolve()))}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT id, consulted_on, brand, valid_until, rows, source_file FROM batches"
                                " WHERE kind = 'consultation' ORDER BY consulted_on DESC, id DESC LIMIT 50").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return None


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px 32px;color:#212121;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#616161} table{border-collapse:collapse;margin:6px 0} td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1b5e20;font-weight:600} .bad{color:#b71c1c;font-weight:600}
.verify{padding:10px 14px;border-radius:6px;margin:8px 0} .verify.ok{background:#e8f5e9} .verify.bad{background:#ffebee}
#chart{max-width:100%;height:auto} .tick{font-size:11px;fill:#424242} .legend{margin:6px 0 0 60px} .key{display:inline-block;margin:2px 14px 2px 0}
.key i{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px;border-radius:2px}
.tiles{display:flex;gap:14px;flex-wrap:wrap} .tile{border:1px solid #e0e0e0;border-radius:6px;padding:8px 14px;min-width:120px}
.tile b{display:block;font-size:20px}
"""


def _tally(groups: list[dict], key: str) -> dict[str, dict]:
    """Per value of ``key`` (a day, a box): total, ALLOW, BLOCK, covered and uncovered attempts."""
    out: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for g in groups:
        d = out[g[key]]
        d["total"] += g["attempts"]
        d[g["decision"]] += g["attempts"]
        if g["reason"] in COVERED:
            d["covered"] += g["attempts"]
        if g["reason"] in UNCOVERED:
            d["uncovered"] += g["attempts"]
    return out


def _pct(a, b) -> str:
    return f"{100 * a / b:.1f}%" if b else "–"


def _integrity(verify_result, boxes: dict | None) -> list[str]:
    e = html.escape
    if boxes is None:
        v = verify_result
        parts = [f'<h2>Integrity of the log</h2><div id="verify" class="verify {"ok" if v.ok else "bad"}">'
                 f'{"✔" if v.ok else "✘"} {e(v.summary())}</div>']
        return parts + [f'<div class="meta">{e(note)}</div>' for note in v.notes]
    ok = all(v.ok for v in boxes.values())
    parts = [f'<h2>Integrity of the trail, box by box</h2><div id="verify" class="verify {"ok" if ok else "bad"}">'
             + (f"{'✔' if ok else '✘'} {len(boxes)} box chain(s) verified at the centre"
                + ("" if ok else f"; broken: {e(', '.join(b for b, v in boxes.items() if not v.ok))}")
                if boxes else "no box has shipped audit rows")
             + "</div>"]
    for box, v in boxes.items():
        parts.append(f'<div class="verify {"ok" if v.ok else "bad"}" data-box="{e(box)}">'
                     f'{"✔" if v.ok else "✘"} box {e(box)}: {e(v.summary())}</div>')
        parts += [f'<div class="meta">{e(note)}</div>' for note in v.notes]
    return parts


def _per_box(groups: list[dict], boxes: dict) -> list[str]:
    """The counts of each box of the fleet (a box with no attempts in the period too)."""
    e = html.escape
    tally = _tally(groups, "box")
    parts = ['<h2>Attempts per box</h2><table id="boxes"><tr><th>box</th><th class=n>attempts</th>'
             "<th class=n>allowed</th><th class=n>refused</th><th class=n>consultation coverage</th>"
             "<th>chain at the centre</th></tr>"]
    for box in sorted(set(boxes) | set(tally)):
        d, v = tally[box], boxes.get(box)
        chain = "–" if v is None else (f"intact, {v.rows} rows" if v.ok else f"BROKEN at row {v.problem.row_id}")
        parts.append(f'<tr data-box="{e(box)}"><td>{e(box)}</td><td class=n>{d["total"]}</td>'
                     f'<td class=n>{d["ALLOW"]}</td><td class=n>{d["BLOCK"]}</td>'
                     f'<td class=n>{_pct(d["covered"], d["covered"] + d["uncovered"])}</td><td>{chain}</td></tr>')
    return parts + ["</table>"]


def render(*, groups: list[dict], verify_result=None, title: str, generated_at: str, period: str,
           register_db: Path | None = None, checkpoints: list[tuple] = (), notes: list[str] = (),
           boxes: dict | None = None) -> str:
    """The report's HTML. ``boxes`` (box -> VerifyResult) makes it the fleet's: ``groups`` then name
    their box, and ``verify_result`` is not used."""
    e = html.escape
    total = sum(g["attempts"] for g in groups)
    allowed = sum(g["attempts"] for g in groups if g["decision"] == "ALLOW")
    refused = total - allowed
    by_reason: dict[tuple, int] = defaultdict(int)
    for g in groups:
        by_reason[(g["decision"], g["reason"])] += g["attempts"]
    per_day = _tally(groups, "day")
    covered = sum(n for (_d, r), n in by_reason.items() if r in COVERED)
    uncovered = sum(n for (_d, r), n in by_reason.items() if r in UNCOVERED)
    pct = _pct

    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{e(title)}</h1><div class=\"meta\">period: {e(period)} · generated {e(generated_at)}</div>"]
    parts += _integrity(verify_result, boxes)
    for note in notes:
        parts.append(f'<div class="meta note">{e(note)}</div>')
    parts.append('<div class="tiles">'
                 f'<div class="tile">attempts<b id="total">{total}</b></div>'
                 f'<div class="tile">allowed<b>{allowed}</b>{pct(allowed, total)}</div>'
                 f'<div class="tile">refused<b>{refused}</b>{pct(refused, total)}</div>'
                 f'<div class="tile">consultation coverage<b id="coverage">{pct(covered, covered + uncovered)}</b>'
                 f'{covered} of {covered + uncovered}</div></div>')
    if boxes is not None:
        parts += _per_box(groups, boxes)
    parts.append("<h2>Attempts per day, by reason</h2>")
    if groups:
        parts.append(chart_svg(groups))
        parts.append(_legend({r for (_d, r) in by_reason}))
    else:
        parts.append('<p id="chart-empty">No attempts in this period.</p>')
    parts.append("<h2>Top reasons</h2><table><tr><th>decision</th><th>reason</th><th class=n>attempts</th>"
                 "<th class=n>share</th></tr>")
    for (d, r), n in sorted(by_reason.items(), key=lambda kv: -kv[1])[:12]:
        parts.append(f"<tr><td>{e(d)}</td><td><i style=\"color:{_colour(r)}\">■</i> {e(r)}</td>"
                     f"<td class=n>{n}</td><td class=n>{pct(n, total)}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Consultation coverage</h2><p>Of the attempts whose decision needed a consultation of the "
                 f"register ({_coverage_rules()}: the do-not-contact list, an opt-out, the conduct code, a contract "
                 "or a callback request), the share that found a consultation still valid on the day of the call. "
                 "The rest were refused as <code>not_consulted</code> or <code>consultation_expired</code>.</p>"
                 "<table><tr><th>day</th><th class=n>attempts</th><th class=n>allowed</th><th class=n>refused</th>"
                 "<th class=n>covered</th><th class=n>not covered</th><th class=n>coverage</th></tr>")
    for day in sorted(per_day):
        d = per_day[day]
        parts.append(f"<tr><td>{day}</td><td class=n>{d['total']}</td><td class=n>{d['ALLOW']}</td>"
                     f"<td class=n>{d['BLOCK']}</td><td class=n>{d['covered']}</td><td class=n>{d['uncovered']}</td>"
                     f"<td class=n>{pct(d['covered'], d['covered'] + d['uncovered'])}</td></tr>")
    parts.append("</table>")
    batches = _batches(register_db)
    if batches is None:
        parts.append('<p class="meta">The register database (rpo.db) was not available: no list of '
                     "consultation batches.</p>")
    else:
        parts.append("<h3>Consultation batches in the register (newest 50)</h3><table><tr><th>batch</th>"
                     "<th>consulted on</th><th>valid until</th><th>brand</th><th class=n>numbers</th><th>file</th></tr>")
        for b in batches:
            parts.append(f"<tr><td>{b[0]}</td><td>{e(b[1] or '')}</td><td>{e(b[3] or '')}</td>"
                         f"<td>{e(b[2] or '(shared)')}</td><td class=n>{b[4]}</td><td>{e(Path(b[5] or '').name)}</td></tr>")
        parts.append("</table>")
    if checkpoints:
        parts.append("<h2>Retention</h2><table><tr><th>checkpoint</th><th>pruned at</th><th>by</th>"
                     "<th>rows</th><th>ids</th><th>before</th></tr>")
        for c in checkpoints:
            parts.append(f"<tr><td>{c[0]}</td><td>{e(c[1])}</td><td>{e(c[2])}</td><td class=n>{c[3]}</td>"
                         f"<td>{c[4]}..{c[5]}</td><td>{e(c[6])}</td></tr>")
        parts.append("</table>")
    # The script only records how the browser laid the chart out (tests read it); the page needs no script.
    parts.append("<script>(function(){var c=document.getElementById('chart');if(!c)return;"
                 "var b=c.getBoundingClientRect(),r=c.querySelectorAll('rect.bar'),k=0;"
                 "for(var i=0;i<r.length;i++){var q=r[i].getBoundingClientRect();if(q.width>0&&q.height>0)k++;}"
                 "c.setAttribute('data-rendered',Math.round(b.width)+'x'+Math.round(b.height)+' bars='+k);})();"
                 "</script></body></html>")
    return "\n".join(parts)
