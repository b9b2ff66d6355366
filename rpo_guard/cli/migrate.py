"""`rpo-guard migrate`: upgrade rpo.db and audit.db to this rpo_guard's schema."""
from __future__ import annotations

import json
import sys

import click

from .context import pass_ctx


@click.command(short_help="Upgrade the databases' schema step by step.")
@click.option("--dry-run", is_flag=True, help="show what would be done, change nothing")
@click.option("--wait", "wait_s", type=click.FloatRange(0, 3600), default=60, show_default=True,
              metavar="SECONDS", help="how long to wait for a running import's write lock")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@pass_ctx
def migrate(ctx, dry_run, wait_s, as_json):
    """Upgrade the databases' schema step by step (one transaction per step).

    Run it after installing a new rpo_guard: until then the AGI refuses
    every call on a register of an older schema (BLOCK error). Safe to run
    again: a database already current is left alone. A database newer than
    this rpo_guard is refused. Exit status: 0 done (or nothing to do),
    1 a database was refused, a step failed or the result lacks objects.
    """
    from rpo_guard.migrate import migrate as run

    plans = run(ctx.cfg, dry_run=dry_run, wait_s=wait_s)
    failed = any(p.problem for p in plans) or any(p.missing_objects for p in plans)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "databases": [p.as_dict() for p in plans],
                               "exit": int(failed)}, sort_keys=True))
        sys.exit(int(failed))
    for p in plans:
        head = f"{p.name:<9}{p.path}: "
        if p.version is None:
            click.echo(head + "missing (`rpo-guard init` creates it)")
            continue
        if p.problem:
            click.echo(head + f"version {p.version}: REFUSED: {p.problem}", err=True)
            continue
        if p.applied:
            click.echo(head + f"migrated to version {p.version}")
        elif p.steps:
            click.echo(head + f"version {p.version}, would migrate to {p.current}")
        else:
            click.echo(head + f"version {p.version}, current")
        for v, description in p.steps:
            word = "applied" if v in p.applied else ("would apply" if dry_run else "skipped (already done)")
            click.echo(f"  step {v} {word}: {description}")
        if p.missing_objects:
            click.echo(f"  MISSING after migration: {', '.join(p.missing_objects)}", err=True)
    sys.exit(int(failed))
