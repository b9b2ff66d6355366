"""``rpo-guard``: the command line for sysadmins and auditors (click)."""
from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import date, datetime
from pathlib import Path

import click

from . import config as config_mod


class Ctx:
    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self._cfg = None

    @property
    def cfg(self):
        if self._cfg is None:
            try:
                self._cfg = config_mod.load(self.config_path)
            except config_mod.ConfigError as exc:
                raise click.UsageError(str(exc)) from None
        return self._cfg


pass_ctx = click.make_pass_decorator(Ctx)


@click.group()
@click.option("--config", "config_path", metavar="PATH", default=None,
              help=f"INI file (default: ${config_mod.ENV_VAR}, else {config_mod.DEFAULT_PATH})")
@click.version_option(package_name="rpo_guard")
@click.pass_context
def cli(ctx, config_path):
    """rpo_guard: refuse outbound calls the RPO, consents or the do-not-contact list bar."""
    ctx.obj = Ctx(config_path)


@cli.command()
@pass_ctx
def init(ctx):
    """Create the data folder and both databases (safe to run again)."""
    from .audit_log import AuditLog
    from .schema import open_db

    cfg = ctx.cfg
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    open_db(cfg.register_db, cfg.file_mode).close()
    AuditLog(cfg.audit_db, file_mode=cfg.file_mode).close()
    click.echo(f"register: {cfg.register_db}\naudit:    {cfg.audit_db}")


def _parse_at(text: str | None, tz: str) -> datetime | None:
    if not text:
        return None
    from zoneinfo import ZoneInfo
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 date-time", param_hint="--at") from None
    return at if at.tzinfo else at.replace(tzinfo=ZoneInfo(tz))


@cli.command()
@click.argument("number")
@click.option("--brand", default="", help="the brand (data controller) the call is made for")
@click.option("--at", "at_text", metavar="ISO8601", help="decide as of this moment (what-if); default now")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@pass_ctx
def check(ctx, number, brand, at_text, as_json):
    """Decide one number as the AGI would, without recording an attempt.

    Exit status: 0 ALLOW, 1 BLOCK, 2 usage or configuration error.
    """
    from .guard import check_call
    from .store import Store

    cfg = ctx.cfg
    at = _parse_at(at_text, cfg.timezone)
    store = None
    try:
        store = Store(cfg.register_db, cfg.busy_timeout_ms)
    except Exception as exc:
        store_error = exc
    outcome = check_call(cfg, store, number, brand, at)
    v = outcome.verdict
    if store is None and v.reason == "error":
        v = type(v)(v.decision, v.reason, v.basis, f"{type(store_error).__name__}: {store_error}")
    if as_json:
        click.echo(json.dumps({
            "decision": v.decision, "reason": v.reason, "number": outcome.e164, "dialed": number,
            "brand": brand, "at": outcome.at.isoformat(timespec="seconds"), "detail": v.detail,
            "basis": v.basis}, sort_keys=True))
    else:
        click.echo(f"{v.decision} {v.reason}  {outcome.e164 or number!r}" + (f"  brand={brand}" if brand else ""))
        if v.detail:
            click.echo(f"  why: {v.detail}")
        if v.basis:
            click.echo("  on:  " + ", ".join(f"{k}={val}" for k, val in v.basis.items()))
    sys.exit(0 if v.allowed else 1)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date YYYY-MM-DD", param_hint="--date") from None


@cli.command("import-consultation")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--date", "date_text", required=True, metavar="YYYY-MM-DD", help="the day the register was consulted")
@click.option("--brand", default="", help="the operator account the register was consulted on (default: shared)")
@pass_ctx
def import_consultation(ctx, file, date_text, brand):
    """Import a consultation result (CSV with number and status columns)."""
    from .sync import ImportFailed
    from .sync import import_consultation as do_import

    try:
        result = do_import(ctx.cfg, file, _date(date_text), brand)
    except ImportFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(result.message)


@cli.command("import-consents")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def import_consents(ctx, file):
    """Import the consent log (CSV: number, brand, kind, given_at, ends_at, channel, evidence)."""
    from .sync import ImportFailed
    from .sync import import_consents as do_import

    try:
        result = do_import(ctx.cfg, file)
    except ImportFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(result.message)


@cli.group()
def dnc():
    """The internal do-not-contact list (global or per brand)."""


def _number_error(exc):
    return click.ClickException(str(exc))


@dnc.command("add")
@click.argument("number")
@click.option("--brand", default="", help="only for this brand (default: every brand)")
@click.option("--reason", default="", help="why (kept for the auditors)")
@pass_ctx
def dnc_add(ctx, number, brand, reason):
    from .numbers import InvalidNumber
    from .sync import dnc_add as do
    try:
        click.echo(do(ctx.cfg, number, brand, reason))
    except InvalidNumber as exc:
        raise _number_error(exc) from None


@dnc.command("remove")
@click.argument("number")
@click.option("--brand", default="", help="the brand of the entry (default: the global entry)")
@pass_ctx
def dnc_remove(ctx, number, brand):
    from .numbers import InvalidNumber
    from .sync import dnc_remove as do
    try:
        click.echo(do(ctx.cfg, number, brand))
    except (InvalidNumber, LookupError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None


@dnc.command("list")
@click.argument("number", required=False)
@click.option("--brand", default=None, help="only entries of this brand ('' for global ones)")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def dnc_list(ctx, number, brand, as_json):
    from .numbers import InvalidNumber
    from .sync import dnc_list as do
    try:
        rows = do(ctx.cfg, number, brand)
    except InvalidNumber as exc:
        raise _number_error(exc) from None
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['number']}\t{r['brand'] or '*'}\t{r['added_at']}\t{r['added_by']}\t{r['reason']}")


def default_agi_path() -> str:
    here = Path(sys.executable).parent / "rpo-guard-agi"
    if here.exists():
        return str(here)
    return shutil.which("rpo-guard-agi") or str(here)


@cli.command("simulate-call")
@click.argument("number")
@click.option("--brand", default="", help="second argument of the AGI")
@click.option("--caller-id", default="unknown", help="CALLERID(num) of the channel")
@click.option("--agi", "agi_path", default=None, metavar="PATH", help="the AGI script (default: rpo-guard-agi)")
@click.option("--hangup-after", type=float, default=None, metavar="SECONDS", help="the caller hangs up this soon")
@click.option("--quiet", is_flag=True, help="print only the result line")
@pass_ctx
def simulate_call(ctx, number, brand, caller_id, agi_path, hangup_after, quiet):
    """Run the AGI exactly as Asterisk 22 would and show the session."""
    from .harness import Channel, run_process_agi

    env = {}
    if ctx.config_path:
        env[config_mod.ENV_VAR] = os.path.abspath(ctx.config_path)
    channel = Channel(extension=number, callerid=caller_id)
    session = run_process_agi(agi_path or default_agi_path(), [number, brand], channel, env=env,
                              hangup_after=hangup_after)
    if not quiet:
        for line in session.transcript:
            click.echo(line)
    click.echo(f"RPO_RESULT={session.result or '(unset)'} RPO_REASON={session.reason or '(unset)'} "
               f"AGISTATUS={session.agistatus} -> {'DIAL' if session.dialplan_allows else 'HANGUP(21)'}")
    sys.exit(0 if session.dialplan_allows else 1)


@cli.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where to build the demo databases (default: a temporary folder)")
def demo(data_dir):
    """A small campaign of simulated calls on the embedded sample data."""
    from .demo import run_demo
    run_demo(data_dir)


from .cli_audit import audit as _audit  # noqa: E402
cli.add_command(_audit)


def main() -> None:
    cli(prog_name="rpo-guard")


if __name__ == "__main__":
    main()
