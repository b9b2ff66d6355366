"""CLI commands of the sync: imports, `status`, `watch`, `dnc import`."""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import click

from .context import pass_ctx


def _date(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a date YYYY-MM-DD", param_hint="--date") from None


@contextmanager
def _progress(quiet: bool, label: str):
    """A progress callback: a bar on a TTY, nothing under --quiet or when piped."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    state = {"done": 0, "read": False}
    with click.progressbar(length=1, label=label, file=sys.stderr) as bar:
        def cb(done, total):
            bar.length = max(total, 1)
            bar.update(max(done - state["done"], 0))
            state["done"] = max(done, state["done"])
            if done >= total and not state["read"]:
                # the whole file is read; the sorted write into the register can take a while
                state["read"] = True
                bar.label = f"{label}: writing into the register"
                bar.render_progress()
        yield cb


def _fail(cfg, file: Path, exc, move: bool):
    msg = str(exc)
    if move and Path(file).is_file():
        from rpo_guard.sync import quarantine
        target = quarantine(Path(file), msg, cfg.inbox / "quarantine", cfg.timezone)
        msg += f"\n(moved to {target}, reason beside it)"
    raise click.ClickException(msg)


@click.command("import-consultation", short_help='Import a consultation result of the register.')
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--date", "date_text", metavar="YYYY-MM-DD",
              help="the day the register was consulted (else the manifest FILE.manifest.json; never today by default)")
@click.option("--brand", default=None, help="the operator account the register was consulted on (default: shared)")
@click.option("--shape", type=click.Choice(["status", "registered", "cleared"]), default=None,
              help="status: a status per number (default); registered / cleared: only those numbers, with --sent")
@click.option("--sent", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the list that was sent to the register (shapes registered and cleared)")
@click.option("--source", default=None, help="a [source NAME] of the config: columns, delimiter, encoding, words")
@click.option("--skip-invalid", is_flag=True, help="skip rows with a bad number or status word, reporting each")
@click.option("--quarantine", "move", is_flag=True, help="on rejection, move FILE to the inbox's quarantine/")
@click.option("--quiet", is_flag=True, help="no progress bar")
@pass_ctx
def import_consultation(ctx, file, date_text, brand, shape, sent, source, skip_invalid, move, quiet):
    """Import a consultation result (all or nothing, one transaction)."""
    from rpo_guard.sync import ImportFailed, import_file

    cfg = ctx.cfg
    try:
        with _progress(quiet, file.name) as cb:
            result = import_file(cfg, file, kind=None, consulted_on=_date(date_text), brand=brand, shape=shape,
                                 sent=sent, source=source, skip_invalid=skip_invalid, progress=cb)
    except ImportFailed as exc:
        _fail(cfg, file, exc, move)
    for line in result.skipped_rows:
        click.echo(f"skipped: {line}", err=True)
    click.echo(result.message)


@click.command("import-consents", short_help='Upsert the consent log (CSV or JSON Lines).')
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--source", default=None, help="a [source NAME] of the config (encoding, delimiter)")
@click.option("--quarantine", "move", is_flag=True, help="on rejection, move FILE to the inbox's quarantine/")
@click.option("--quiet", is_flag=True, help="no progress bar")
@pass_ctx
def import_consents(ctx, file, source, move, quiet):
    """Upsert the consent log (CSV or JSON Lines: number, brand, kind, given_at, ends_at, channel, evidence)."""
    from rpo_guard.sync import ImportFailed
    from rpo_guard.sync import import_consents as do_import

    try:
        result = do_import(ctx.cfg, file, source=source)
    except ImportFailed as exc:
        _fail(ctx.cfg, file, exc, move)
    click.echo(result.message)


@click.command("import", short_help='Apply a do-not-contact file (CSV or JSON Lines).')
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--source", default=None, help="a [source NAME] of the config (encoding, delimiter)")
@click.option("--quarantine", "move", is_flag=True, help="on rejection, move FILE to the inbox's quarantine/")
@click.option("--quiet", is_flag=True, help="no progress bar")
@pass_ctx
def dnc_import(ctx, file, source, move, quiet):
    """Apply a do-not-contact file (CSV or JSON Lines: number, brand, reason, action add|remove)."""
    from rpo_guard.sync import ImportFailed, import_dnc

    try:
        result = import_dnc(ctx.cfg, file, source=source)
    except ImportFailed as exc:
        _fail(ctx.cfg, file, exc, move)
    click.echo(result.message)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@pass_ctx
def status(ctx, as_json):
    """Freshness per brand, for people and monitoring.

    Exit status (Nagios style): 0 OK; 1 an import failed after the last
    successful one; 2 a brand (or, without brands, the shared account) has no
    valid consultation: every call would be blocked; or the register's schema
    needs `rpo-guard migrate`; or the data folder or a database is
    world-writable; 3 the database cannot be read. Other permission problems
    (world-readable, looser than [store] file_mode, wrong group) are printed
    as warnings without changing the exit status.
    """
    from rpo_guard.register.sources import ImportFailed
    from rpo_guard.register.status import status_report

    try:
        rep = status_report(ctx.cfg)
    except (ImportFailed, Exception) as exc:  # noqa: B014 - any trouble is UNKNOWN for monitoring
        if as_json:
            click.echo(json.dumps({"error": f"{type(exc).__name__}: {exc}", "exit": 3}))
        else:
            click.echo(f"UNKNOWN: {exc}", err=True)
        sys.exit(3)
    if ctx.cfg.central:  # fleet mode: this replica and every box (a stale replica refuses every call)
        from rpo_guard.fleet.replica import report
        rep["fleet"] = report(ctx.cfg)
        if rep["fleet"]["stale"]:
            rep["exit"] = 2
    if as_json:
        click.echo(json.dumps(rep, sort_keys=True, default=str))
        sys.exit(rep["exit"])
    word = {0: "OK", 1: "WARNING", 2: "CRITICAL"}[rep["exit"]]
    click.echo(f"{word}: register {rep['database']} on {rep['today']}")
    for b in rep["brands"]:
        click.echo(f"  brand {b['brand'] or '(shared)'}: {b['numbers_consulted']} number{'' if b['numbers_consulted'] == 1 else 's'} consulted, "
                   f"{b['registered']} registered; valid consultations {b['valid_consultations']} "
                   f"(newest {b['newest_valid'] or '-'}, oldest {b['oldest_valid'] or '-'}); "
                   f"{b['expiring_within_3_days']} expire within 3 days; consents {b['consents']}, "
                   f"DNC {b['dnc_active']}")
    li = rep["last_import"]
    click.echo(f"  last import: {li['at']} {li['kind']} {li['file']} ({li['rows']} row{'' if li['rows'] == 1 else 's'})" if li else
               "  last import: none")
    for f in rep["failed_since_last_success"]:
        click.echo(f"  FAILED {f['at']} {f['kind']} {f['file']}: {f['error']}")
    if rep["nothing_valid"]:
        click.echo(f"  nothing valid for: {', '.join(rep['nothing_valid'])} (every call is blocked)")
    if rep["schema_problem"]:
        click.echo(f"  register {rep['schema_problem']}")
    for w in rep["permissions"]:
        click.echo(f"  permissions: {w}")
    if "fleet" in rep:
        from .fleet import describe
        for line in describe(rep["fleet"]):
            click.echo(f"  {line}")
    sys.exit(rep["exit"])


@click.command(short_help='Import what lands in the inbox (foreground).')
@click.option("--inbox", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="the folder to watch (default: [sync] inbox)")
@click.option("--polling", is_flag=True, default=None, help="poll instead of inotify (NFS/CIFS)")
@click.option("--once", is_flag=True, help="one scan of the inbox, then exit (for cron or a systemd timer)")
@pass_ctx
def watch(ctx, inbox, polling, once):
    """Import what lands in the inbox; runs in the foreground (systemd)."""
    import signal

    from rpo_guard.register.watch import Inbox

    cfg = ctx.cfg
    box = Inbox(cfg, inbox, log=lambda s: click.echo(s, err=False))
    signal.signal(signal.SIGTERM, lambda *_: box.stop.set())
    use_polling = polling if polling is not None else cfg.observer == "polling"
    try:
        box.run(polling=use_polling, once=once)
    except KeyboardInterrupt:
        pass
