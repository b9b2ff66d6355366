"""``rpo-guard demo``: a small campaign on the embedded sample data.

The sample files are real files in the import formats, written as if the
register had been consulted on 2026-11-01. A consultation is valid only 15
days, so the demo moves every date in them by the same number of days, to
make that consultation two days old today, then imports them into a fresh
data folder and runs each call of ``campaign.csv`` through the real AGI,
driven by the Asterisk peer exactly as a dialplan would.

The calls run on the real clock with the calling-hours rule on. When the
demo runs outside the Code of conduct's calling hours (nights, Sundays,
holidays) every call would be BLOCK outside_calling_hours and nothing else
would show: the demo then says so, shows that block on one extra call, and
runs the whole campaign with ``[conduct] calling_hours = off``. When the
hours open or close within the next minute (the calls take about a second),
the whole campaign runs with them off, so that no answer changes half-way.
Every rule shows whatever the hour.
"""
from __future__ import annotations

import csv
import re
import tempfile
from datetime import date, timedelta
from importlib import resources
from pathlib import Path

import click

ANCHOR = date(2026, 11, 1)  # the consultation date the sample files were written for
_DATE = re.compile(r"(?<!\d)(\d{4}-\d{2}-\d{2})(?!\d)")  # also inside date-times (…T11:20)


def _shifted(text: str, delta: timedelta) -> str:
    return _DATE.sub(lambda m: (date.fromisoformat(m.group(1)) + delta).isoformat(), text)


def run_demo(data_dir: Path | None = None, conduct: dict[str, str] | None = None) -> None:
    """``conduct``: extra ``[conduct]`` settings for the demo's configuration
    (the tests make today a local holiday with it)."""
    from rpo_guard import config as config_mod
    from rpo_guard.harness import Channel, run_process_agi
    from rpo_guard.register.lists import dnc_add
    from rpo_guard.sync import import_consents, import_consultation

    from .context import default_agi_path

    work = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="rpo-guard-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "rpo-guard.conf"
    paths = f"[paths]\ndata_dir = {work / 'data'}\nlog_file = {work / 'failures.log'}\n"

    def write_conf(**more: str) -> None:
        settings = {**(conduct or {}), **more}
        conf.write_text(paths + "[conduct]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))

    write_conf()
    cfg = config_mod.load(str(conf))
    from datetime import datetime, time
    from zoneinfo import ZoneInfo
    consulted = datetime.now(ZoneInfo(cfg.timezone)).date() - timedelta(days=2)
    delta = consulted - ANCHOR

    sample = resources.files("rpo_guard") / "sample_data"
    for name in ("consultation.csv", "consents.csv", "dnc.csv", "campaign.csv", "silent_calls.csv"):
        (work / name).write_text(_shifted((sample / name).read_text(encoding="utf-8"), delta), encoding="utf-8")

    click.echo(f"demo data folder: {work}  (sample dates moved by {delta.days} days: "
               f"the register was consulted on {consulted})")
    click.echo(import_consultation(cfg, work / "consultation.csv", consulted, who="demo").message)
    click.echo(import_consents(cfg, work / "consents.csv", who="demo").message)
    with open(work / "dnc.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            click.echo(dnc_add(cfg, row["number"], row["brand"], row["reason"], who="demo"))
    from rpo_guard.register.conduct import silent_call_add
    with open(work / "silent_calls.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            click.echo(silent_call_add(cfg, row["number"], row["brand"], datetime.fromisoformat(row["at"]),
                                       who="demo"))

    from rpo_guard.rules.calendar_it import call_time
    from rpo_guard.rules.decision import calling_hours_problem

    def problem(at):
        return calling_hours_problem(call_time(at, cfg.timezone, cfg.local_holidays), cfg.policy)

    now = datetime.now(ZoneInfo(cfg.timezone))
    closed = problem(now)
    # The calls take a second or so: when the calling hours open or close within the next
    # minute the answers would change half-way through, so the campaign runs with them off.
    edge = (closed is None) != (problem(now + timedelta(minutes=1)) is None)
    if edge:
        click.echo("\nnote: the calling hours open or close within the minute: the campaign runs with\n"
                   "  [conduct] calling_hours = off so that every call gives the same answer throughout.\n")
        write_conf(calling_hours="off")
        closed = None
    elif closed is not None:
        click.echo(f"\nnote: now is outside the calling hours ({closed.detail}): every call would be\n"
                   "  BLOCK outside_calling_hours. The first call shows it; then the whole campaign runs with\n"
                   "  [conduct] calling_hours = off so that the other rules show. Try the what-if at the end.\n")
    agi = default_agi_path()
    env = {config_mod.ENV_VAR: str(conf)}
    click.echo(f"\nsimulated calls through {agi} (the Asterisk 22.10.1 AGI peer of rpo_guard.harness):\n")
    header = f"{'dialed':<20} {'brand':<12} {'RPO_RESULT':<10} {'RPO_REASON':<21} {'AGISTATUS':<9} dialplan"
    click.echo(header)
    click.echo("-" * len(header))
    with open(work / "campaign.csv", newline="", encoding="utf-8") as fh:
        campaign = [(row, row["what it shows"]) for row in csv.DictReader(fh)]
    if closed is not None:
        campaign.insert(0, (campaign[0][0], "outside the calling hours now"))
    first = None
    for i, (row, what) in enumerate(campaign):
        if i == 1 and closed is not None:
            write_conf(calling_hours="off")
        channel = Channel(extension=re.sub(r"\D", "", row["dialed"]) or "s", callerid=row["caller_id"],
                          uniqueid=f"1795339{100 + i}.{i * 2 + 1}")
        s = run_process_agi(agi, [row["dialed"], row["brand"]], channel, env=env)
        first = first or s
        click.echo(f"{row['dialed']:<20} {row['brand']:<12} {s.result or '-':<10} {s.reason or '-':<21} "
                   f"{s.agistatus:<9} {'Dial' if s.dialplan_allows else 'Hangup(21)':<10}  # {what}")
    click.echo("\nthe first session, as Asterisk logs it with `agi set debug on`:")
    for line in first.transcript:
        click.echo("  " + line)
    click.echo(f"\nevery attempt is in the audit log: {cfg.audit_db}")
    # The what-ifs below use the shipped rules: the campaign may have run with the calling
    # hours off, so the configuration goes back to the demo's own before they are suggested.
    write_conf()
    expired = consulted + timedelta(days=20)
    while problem(datetime.combine(expired, time(10, 0), ZoneInfo(cfg.timezone))) is not None:
        expired += timedelta(days=1)  # a working day, so that the answer is the consultation's
    click.echo(f"try: rpo-guard --config {conf} check 0612345678 --brand 'Energia Uno' --at "
               f"{expired.isoformat()}T10:00   # what-if: the consultation expired")
    sunday = consulted + timedelta(days=(6 - consulted.weekday()) or 7)
    click.echo(f"try: rpo-guard --config {conf} check 0612345678 --brand 'Energia Uno' --caller-id 0612340000 "
               f"--at {sunday.isoformat()}T11:00   # what-if: a Sunday, no calls (Code of conduct)")
