"""``rpo-guard caller-id ...``, ``rpo-guard silent-call``, ``rpo-guard holidays``:
the conduct-code commands (registered in :mod:`rpo_guard.cli.main`)."""
from __future__ import annotations

import json
from datetime import date, datetime

import click

_pass_ctx = click.pass_obj  # the rpo_guard.cli.context.Ctx of the `rpo-guard` group


@click.group("caller-id", short_help='Caller IDs declared in the ROC, per brand.')
def caller_id():
    """Caller IDs declared in the ROC, per brand ('' = every brand).

    With a list for the brand, a call must present one of its numbers;
    without one, any Italian geographic, mobile, 0843 or 0844 number.
    """


@caller_id.command("add", short_help='Declare a caller ID (for every brand, or one).')
@click.argument("number")
@click.option("--brand", default="", help="only for this brand (default: every brand)")
@click.option("--note", default="", help="e.g. the ROC declaration it comes from")
@_pass_ctx
def caller_id_add(ctx, number, brand, note):
    """Declare NUMBER as a caller ID the brand's calls may present (as declared in the ROC)."""
    from rpo_guard.register.conduct import caller_id_add as do
    from rpo_guard.rules.numbers import InvalidNumber
    try:
        click.echo(do(ctx.cfg, number, brand, note))
    except InvalidNumber as exc:
        raise click.ClickException(str(exc)) from None


@caller_id.command("remove", short_help='Withdraw a declared caller ID (history kept).')
@click.argument("number")
@click.option("--brand", default="", help="the brand of the declaration (default: the every-brand one)")
@_pass_ctx
def caller_id_remove(ctx, number, brand):
    """Withdraw a declared caller ID; the declaration stays in the history with who and when."""
    from rpo_guard.register.conduct import caller_id_remove as do
    from rpo_guard.rules.numbers import InvalidNumber
    try:
        click.echo(do(ctx.cfg, number, brand))
    except (InvalidNumber, LookupError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None


@caller_id.command("list", short_help='The caller IDs a call may present.')
@click.option("--brand", default=None, help="the numbers a call for this brand may present")
@click.option("--json", "as_json", is_flag=True, help="print one JSON array")
@_pass_ctx
def caller_id_list(ctx, brand, as_json):
    """The declared caller IDs (number, brand or * for every brand, added at, by, note)."""
    from rpo_guard.register.conduct import caller_id_list as do
    rows = do(ctx.cfg, brand)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['number']}\t{r['brand'] or '*'}\t{r['added_at']}\t{r['added_by']}\t{r['note']}")


@click.command("silent-call", short_help='Record a silent call: a cool-down for the number.')
@click.argument("number")
@click.option("--brand", default="", help="the brand the call was made for (kept; the cool-down covers every brand)")
@click.option("--at", "at_text", metavar="ISO8601", help="when it happened (default: now)")
@click.option("--uniqueid", default="", help="Asterisk UNIQUEID of the abandoned call")
@click.option("--source", default="cli", type=click.Choice(["cli", "dialplan", "dialer"]),
              help="who reported it")
@_pass_ctx
def silent_call(ctx, number, brand, at_text, uniqueid, source):
    """Record a silent (abandoned) call: the number is refused for [conduct] silent_call_days after."""
    from rpo_guard.register.conduct import silent_call_add
    from rpo_guard.rules.numbers import InvalidNumber

    from .context import parse_at
    cfg = ctx.cfg
    try:
        click.echo(silent_call_add(cfg, number, brand, parse_at(at_text, cfg.timezone), uniqueid, source))
    except (InvalidNumber, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command("holidays", short_help='The holidays the calling-hours rule uses.')
@click.argument("year", type=int, required=False)
@_pass_ctx
def holidays_cmd(ctx, year):
    """The holidays the calling-hours rule uses (national, then [conduct] local_holidays)."""
    from datetime import timedelta

    from rpo_guard.rules.calendar_it import local_holiday, national_holidays, package_version
    cfg = ctx.cfg
    if not year:
        from zoneinfo import ZoneInfo
        year = datetime.now(ZoneInfo(cfg.timezone)).year  # the rules' year, not the server's
    national = national_holidays(year)
    day = date(year, 1, 1)
    click.echo(f"# {year}: national holidays from the holidays package {package_version()}; "
               "no calls on these days, reduced hours the day before")
    while day.year == year:
        names = [n for n in (national.get(day, ""), local_holiday(day, cfg.local_holidays)) if n]
        if names:
            click.echo(f"{day}\t{day:%a}\t{'; '.join(names)}")
        day += timedelta(days=1)
