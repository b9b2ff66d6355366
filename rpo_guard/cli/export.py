"""``rpo-guard export-barred``: a lead list filtered before dialing (the answers of ``check``, in bulk)."""
from __future__ import annotations

import sys

import click

from .context import parse_at, pass_ctx


@click.command("export-barred")
@click.argument("leads", type=click.Path(dir_okay=False))
@click.option("--brand", default="", help="the brand (data controller) the list is dialed for")
@click.option("--at", "at_text", metavar="ISO8601", help="decide as of this moment (the dialing time); default now")
@click.option("--caller-id", "caller_id", default=None, metavar="NUMBER",
              help="the caller ID the calls will present (without it the caller-ID rule is not checked)")
@click.option("--callable", "callable_only", is_flag=True, help="write the callable leads instead of the refused ones")
@click.option("--source", default=None, metavar="NAME", help="read the list as [source NAME] says (encoding, delimiter, columns)")
@click.option("--column", default=None, metavar="NAME|N", help="the number column: header name or 1-based position")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default="-",
              help="where to write the CSV (default: standard output)")
@pass_ctx
def export_barred(ctx, leads, brand, at_text, caller_id, callable_only, source, column, output):
    """Filter a lead list before dialing.

    Decides every number of the list as `check` would and writes the refused
    ones with their reason (or, with --callable, only the callable ones).

    Output: CSV `line,number,e164,decision,reason,detail` (line = the lead's
    line in the list). A summary per reason goes to standard error.
    Exit status: 0 done, 2 usage or configuration error, 1 unreadable list or register.
    """
    from rpo_guard.register.export import decide_leads, read_leads, write_csv
    from rpo_guard.register.sources import ImportFailed
    from rpo_guard.register.store import Store, StoreError

    cfg = ctx.cfg
    at = parse_at(at_text, cfg.timezone)
    try:
        store = Store(cfg.register_db, cfg.busy_timeout_ms)
    except (StoreError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        with click.open_file(output, "w", encoding="utf-8", atomic=output != "-") as out:
            counts = write_csv(out, decide_leads(cfg, store, read_leads(cfg, leads, source, column), brand, at,
                                                 caller_id), callable_only)
    except ImportFailed as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    total = sum(counts.values())
    click.echo(f"{total} lead(s): " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda x: -x[1])),
               err=True)
    sys.exit(0)
