"""``rpo-guard``: the command line for sysadmins and auditors (click)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from rpo_guard import config as config_mod

from .context import Ctx, default_agi_path, parse_at, pass_ctx

SIMULATE_ENV = "RPO_GUARD_SIMULATE"  # read by rpo_guard.agi: "1", or the moment to decide as of


@click.group()
@click.option("--config", "config_path", metavar="PATH", default=None,
              help=f"INI file (default: ${config_mod.ENV_VAR}, else {config_mod.DEFAULT_PATH})")
@click.version_option(package_name="rpo_guard")
@click.pass_context
def cli(ctx, config_path):
    """rpo_guard: refuse outbound calls the RPO, consents or the do-not-contact list bar."""
    ctx.obj = Ctx(config_path)


@cli.command(short_help='Create the data folder and both databases.')
@click.option("--asterisk-user", default=None, metavar="USER",
              help="Asterisk's account, checked for reading the register and appending to the "
                   "audit log (default: asterisk, when that account exists)")
@pass_ctx
def init(ctx, asterisk_user):
    """Create the data folder and both databases (safe to run again).

    The folder is created 0750, or 2770 (setgid) with a [store] group; the
    databases with [store] file_mode (and the group). Run as root, the
    databases go to the data folder's owner. Existing files are left as they
    are; their permission problems are printed (as by `status`), and so is
    anything Asterisk's user could not do with them (every call would then be
    refused).
    """
    from rpo_guard import perms
    from rpo_guard.audit.log import AuditLog
    from rpo_guard.register.schema import SchemaError, open_db

    cfg = ctx.cfg
    try:
        perms.make_data_dir(cfg.data_dir, cfg.group)
        db = open_db(cfg.register_db, cfg.file_mode, cfg.group)
        if cfg.central:  # fleet mode: the replica's tables, so lookups see its state from the start
            from rpo_guard.fleet.replica import ensure
            ensure(db.conn, cfg.box_name)
        db.close()
        AuditLog(cfg.audit_db, file_mode=cfg.file_mode, group=cfg.group).close()
    except (perms.PermissionProblem, SchemaError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"register: {cfg.register_db}\naudit:    {cfg.audit_db}")
    for w in perms.check(cfg.data_dir, [cfg.register_db, cfg.audit_db], cfg.file_mode, cfg.group):
        click.echo(f"warning: {w}", err=True)
    user = asterisk_user or "asterisk"
    try:
        problems = perms.access_problems(user, cfg.data_dir, cfg.register_db, cfg.audit_db)
    except KeyError:
        if asterisk_user:
            raise click.BadParameter(f"no such user {asterisk_user!r}", param_hint="--asterisk-user") from None
        return  # no Asterisk on this machine (a development box): nothing to check
    for p in problems:
        click.echo(f"warning: {p}", err=True)
    if problems:
        click.echo(f"warning: every call the AGI makes as {user} would be refused (BLOCK error): set "
                   f"[store] group to a group {user} is in, or run init as the account that owns "
                   f"{cfg.data_dir} (docs/sysadmin.md, Permissions)", err=True)
    else:
        click.echo(f"{user} can read the register and append to the audit log")


@cli.command(short_help='Decide one number as the AGI would (what-if).')
@click.argument("number")
@click.option("--brand", default="", help="the brand (data controller) the call is made for")
@click.option("--at", "at_text", metavar="ISO8601", help="decide as of this moment (what-if); default now")
@click.option("--caller-id", "caller_id", default=None, metavar="NUMBER",
              help="the caller ID the call would present (without it the caller-ID rule is not checked)")
@click.option("--attempts", "attempts_n", type=click.IntRange(min=0), default=None, metavar="N",
              help="with attempt caps: decide as if the number had N allowed attempts in every window "
                   "(default: count them in the audit log, as the AGI does)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@pass_ctx
def check(ctx, number, brand, at_text, caller_id, attempts_n, as_json):
    """Decide one number as the AGI would, without recording an attempt.

    The brand's policy ([brand NAME]) applies. With attempt caps, the allowed
    attempts are counted in the audit log (none while it does not exist), or
    taken from --attempts.

    Exit status: 0 ALLOW, 1 BLOCK, 2 usage or configuration error.
    """

    from rpo_guard.audit.attempts import AttemptCounter, FixedCounter
    from rpo_guard.guard import check_call
    from rpo_guard.register.store import Store

    cfg = ctx.cfg
    at = parse_at(at_text, cfg.timezone)
    policy = cfg.policy_for(brand)
    if caller_id is None:
        policy = policy._replace(caller_id_check=False)
    store = None
    try:
        store = Store(cfg.register_db, cfg.busy_timeout_ms)
    except Exception as exc:
        store_error = exc
    counter, counted = None, ""
    if policy.attempt_caps:
        if attempts_n is not None:
            counter, counted = FixedCounter(attempts_n), f"--attempts {attempts_n}"
        elif not os.path.exists(cfg.audit_db):
            counter, counted = FixedCounter(0), f"no audit log yet ({cfg.audit_db}): no attempts"
        else:
            try:
                counter, counted = AttemptCounter.open_readonly(cfg.audit_db, cfg.busy_timeout_ms), cfg.audit_db
            except Exception as exc:  # check_call then answers BLOCK/error, as the AGI would
                counted = f"audit log unreadable: {type(exc).__name__}: {exc}"
    outcome = check_call(cfg, store, number, brand, at, caller_id=caller_id, policy=policy, attempts=counter)
    if isinstance(counter, AttemptCounter):
        counter.close()
    v = outcome.verdict
    if store is None and v.reason == "error":
        v = type(v)(v.decision, v.reason, v.basis, f"{type(store_error).__name__}: {store_error}")
    if as_json:
        click.echo(json.dumps({
            "decision": v.decision, "reason": v.reason, "number": outcome.e164, "dialed": number,
            "brand": brand, "at": outcome.at.isoformat(timespec="seconds"), "detail": v.detail,
            "basis": v.basis, "caller_id": caller_id,
            "caller_id_checked": caller_id is not None and policy.caller_id_check,
            "attempt_caps": [dict(c._asdict()) for c in policy.attempt_caps], "attempts_counted_from": counted or None},
            sort_keys=True))
    else:
        click.echo(f"{v.decision} {v.reason}  {outcome.e164 or number!r}" + (f"  brand={brand}" if brand else ""))
        if v.detail:
            click.echo(f"  why: {v.detail}")
        if v.basis:
            click.echo("  on:  " + ", ".join(f"{k}={val}" for k, val in v.basis.items()))
        if caller_id is None and cfg.policy_for(brand).caller_id_check:
            click.echo("  note: caller ID not checked (give --caller-id to check it as the AGI does)")
        if counted and v.allowed or v.reason == "attempt_cap":
            click.echo(f"  attempts counted from: {counted}")
    sys.exit(0 if v.allowed else 1)


@cli.command("simulate-call", short_help='Call through the AGI as Asterisk 22 would.')
@click.argument("number")
@click.option("--brand", default="", help="second argument of the AGI")
@click.option("--caller-id", default="unknown", help="CALLERID(num) of the channel")
@click.option("--agi", "agi_path", default=None, metavar="PATH", help="the AGI script (default: rpo-guard-agi)")
@click.option("--hangup-after", type=float, default=None, metavar="SECONDS",
              help="the caller hangs up this soon (0: at once); the check still runs to the end and is recorded")
@click.option("--at", "at_text", metavar="ISO8601",
              help="decide as of this moment (process AGI only); the row keeps the real time")
@click.option("--fastagi", "fastagi", default=None, metavar="HOST:PORT",
              help="call a running `rpo-guard serve` (FastAGI) instead of the process AGI")
@click.option("--quiet", is_flag=True, help="print only the result line")
@pass_ctx
def simulate_call(ctx, number, brand, caller_id, agi_path, hangup_after, at_text, fastagi, quiet):
    """Run the AGI exactly as Asterisk 22 would and show the session.

    As the shipped dialplan does, the channel sets AGISIGHUP=no: a hangup never stops
    the check. The attempt is recorded in the audit log with via=simulate, on a channel
    of the context rpo-guard-simulate; `audit summary` and `audit report` leave such
    rows out of their counts.
    """
    import time

    from rpo_guard.harness import Channel, run_fastagi, run_process_agi

    channel = Channel(extension=number, callerid=caller_id, context="rpo-guard-simulate",
                      uniqueid=f"{int(time.time())}.{os.getpid()}", variables={"AGISIGHUP": "no"})
    if fastagi:
        if at_text:
            raise click.UsageError("--at works with the process AGI only (not with --fastagi)")
        try:
            host, port = config_mod._listen(fastagi)
        except ValueError as exc:
            raise click.BadParameter(f"{fastagi!r}: {exc}", param_hint="--fastagi") from None
        session = run_fastagi(host, port, "rpo_guard?simulate=1", [number, brand], channel,
                              hangup_after=hangup_after)
    else:
        env = {SIMULATE_ENV: "1"}
        if at_text:
            env[SIMULATE_ENV] = parse_at(at_text, ctx.cfg.timezone).isoformat()
        if ctx.config_path:
            env[config_mod.ENV_VAR] = os.path.abspath(ctx.config_path)
        session = run_process_agi(agi_path or default_agi_path(), [number, brand], channel, env=env,
                                  hangup_after=hangup_after, agisighup=False)
    if not quiet:
        for line in session.transcript:
            click.echo(line)
    click.echo(f"RPO_RESULT={session.result or '(unset)'} RPO_REASON={session.reason or '(unset)'} "
               f"AGISTATUS={session.agistatus} -> {'DIAL' if session.dialplan_allows else 'HANGUP(21)'}")
    sys.exit(0 if session.dialplan_allows else 1)


@cli.command(short_help='Simulated calls on the embedded sample data.')
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where to build the demo databases (default: a temporary folder)")
def demo(data_dir):
    """A small campaign of simulated calls on the embedded sample data."""
    from .demo import run_demo
    run_demo(data_dir)


from .conduct import caller_id as _caller_id  # noqa: E402
from .conduct import holidays_cmd as _holidays
from .conduct import silent_call as _silent_call

cli.add_command(_caller_id)
cli.add_command(_silent_call)
cli.add_command(_holidays)

from .sync import import_consents, import_consultation, status, watch  # noqa: E402

cli.add_command(import_consultation)
cli.add_command(import_consents)
cli.add_command(status)
cli.add_command(watch)

from .dnc import dnc  # noqa: E402

cli.add_command(dnc)

from .fastagi import serve  # noqa: E402
from .selftest import selftest  # noqa: E402

cli.add_command(serve)
cli.add_command(selftest)

from .audit import audit as _audit  # noqa: E402

cli.add_command(_audit)

from .migrate import migrate as _migrate  # noqa: E402

cli.add_command(_migrate)

from .fleet import fleet as _fleet  # noqa: E402

cli.add_command(_fleet)

from .export import export_barred  # noqa: E402

cli.add_command(export_barred)

from .vicidial import vicidial as _vicidial  # noqa: E402

cli.add_command(_vicidial)


def main() -> None:
    from rpo_guard.fleet.schema import CentralError
    from rpo_guard.register.schema import SchemaError
    try:
        cli(prog_name="rpo-guard")
    except (SchemaError, CentralError) as exc:  # rpo.db's schema, or fleet mode's centre (nothing written)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
