"""``rpo-guard fleet ...``: the central database, the replica agent, seeding a fleet from one box."""
from __future__ import annotations

import json
import sys

import click

from .context import pass_ctx


def _need_fleet(cfg):
    if not cfg.central:
        raise click.UsageError("fleet mode is off: set [fleet] central (and box) in the configuration")


@click.group(short_help="Fleet mode: central PostgreSQL, replica agent, seed.")
def fleet():
    """Fleet mode: one central PostgreSQL, a replica of it on every box (docs/fleet.md)."""


@fleet.command("migrate", short_help="Create or upgrade the central schema.")
@pass_ctx
def migrate_cmd(ctx):
    """Create or upgrade the central schema (safe to run again)."""
    from rpo_guard.fleet.schema import SCHEMA_VERSION, CentralError, connect, migrate
    cfg = ctx.cfg
    _need_fleet(cfg)
    try:
        conn = connect(cfg.central)
        try:
            applied = migrate(conn)
        finally:
            conn.close()
    except CentralError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"central schema at version {SCHEMA_VERSION}" + (f" (applied {applied})" if applied else " (current)"))


@fleet.command("agent", short_help="Keep this box's rpo.db a replica.")
@click.option("--once", is_flag=True, help="one round (catch up, land, forward, ship), then exit")
@click.option("--clock-offset", type=float, default=0.0, hidden=True, help="tests: this box's clock is off by SECONDS")
@click.option("--chunk-rows", type=int, default=None, hidden=True, help="consultation rows landed per transaction")
@pass_ctx
def agent_cmd(ctx, once, clock_offset, chunk_rows):
    """Keep this box's rpo.db a replica of the centre (runs in the foreground: systemd)."""
    from rpo_guard.fleet.agent import Agent
    from rpo_guard.fleet.replica import CHUNK_ROWS
    from rpo_guard.fleet.schema import CentralError
    cfg = ctx.cfg
    _need_fleet(cfg)
    agent = Agent(cfg, clock_offset=clock_offset, chunk_rows=chunk_rows or CHUNK_ROWS)
    try:
        agent.run(once=once)
    except CentralError as exc:
        raise click.ClickException(str(exc)) from None


@fleet.command("seed", short_help="Copy this box's register into an empty centre.")
@pass_ctx
def seed_cmd(ctx):
    """Copy this box's register (rpo.db) into an empty centre, ids kept (its audit log follows
    through the agent)."""
    from rpo_guard.fleet.schema import CentralError
    from rpo_guard.fleet.seed import seed
    cfg = ctx.cfg
    _need_fleet(cfg)
    try:
        click.echo(seed(cfg))
    except CentralError as exc:
        raise click.ClickException(str(exc)) from None


@fleet.command("status", short_help="This replica and every box of the fleet.")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@pass_ctx
def status_cmd(ctx, as_json):
    """This box's replica and every box of the fleet. Exit 2 when this replica is stale."""
    from rpo_guard.fleet.replica import report
    cfg = ctx.cfg
    _need_fleet(cfg)
    rep = report(cfg)
    if as_json:
        click.echo(json.dumps(rep, sort_keys=True, default=str))
    else:
        for line in describe(rep):
            click.echo(line)
    sys.exit(2 if rep["stale"] else 0)


def describe(rep: dict) -> list[str]:
    """Lines for people: this box, then every box as the centre knows it."""
    st = rep.get("staleness_seconds")
    lines = [f"fleet box {rep['box']}: last sequence applied {rep.get('last_seq')}, staleness "
             f"{'never confirmed' if st is None else f'{st:.1f} s'} (bound {rep['max_staleness_seconds']} s"
             f"{': calls REFUSED' if rep['stale'] else ''}), outbox {rep.get('outbox_depth')}, "
             f"consultations landing {rep.get('pending_batches')}"]
    if rep.get("replica_error"):
        lines.append(f"  replica: {rep['replica_error']}")
    if rep.get("last_error"):
        lines.append(f"  agent's last error: {rep['last_error']}")
    if "centre" in rep:
        c = rep["centre"]
        lines.append(f"  centre: newest change {c['head_seq']} at {c['head_at']}")
        for b in c["boxes"]:
            lines.append(f"  box {b['box']}: applied {b['last_seq']} (lag {b['lag_changes']} changes, "
                         f"{b['lag_seconds']:.1f} s), staleness {b['staleness_seconds']} s, outbox {b['outbox_depth']}, "
                         f"audit unshipped {b['audit_unshipped']}, reported {b['reported_seconds_ago']:.0f} s ago")
    else:
        lines.append(f"  centre: {rep.get('centre_error')}")
    return lines
