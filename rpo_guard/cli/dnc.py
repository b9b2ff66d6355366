"""``rpo-guard dnc``: the internal do-not-contact list (add, remove, list, import)."""
from __future__ import annotations

import json

import click

from .context import pass_ctx
from .sync import dnc_import


@click.group(short_help='The internal do-not-contact list.')
def dnc():
    """The internal do-not-contact list (global or per brand)."""


def _number_error(exc):
    return click.ClickException(str(exc))


@dnc.command("add", short_help='Add a number (for every brand, or one).')
@click.argument("number")
@click.option("--brand", default="", help="only for this brand (default: every brand)")
@click.option("--reason", default="", help="why (kept for the auditors)")
@click.option("--source", default="cli", help="dialplan: an opt-out taken during a call (fleet mode: applied on "
                                              "this box at once and queued for the centre)")
@pass_ctx
def dnc_add(ctx, number, brand, reason, source):
    """Put NUMBER on the internal do-not-contact list: every later call is refused."""
    from rpo_guard.register.lists import dnc_add as do
    from rpo_guard.rules.numbers import InvalidNumber
    try:
        click.echo(do(ctx.cfg, number, brand, reason, source=source))
    except InvalidNumber as exc:
        raise _number_error(exc) from None


@dnc.command("remove", short_help="End a number's entry (its history is kept).")
@click.argument("number")
@click.option("--brand", default="", help="the brand of the entry (default: the global entry)")
@pass_ctx
def dnc_remove(ctx, number, brand):
    """End NUMBER's active entry; it stays in the history with who removed it and when."""
    from rpo_guard.register.lists import dnc_remove as do
    from rpo_guard.rules.numbers import InvalidNumber
    try:
        click.echo(do(ctx.cfg, number, brand))
    except (InvalidNumber, LookupError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None


@dnc.command("list", short_help='List the active entries.')
@click.argument("number", required=False)
@click.option("--brand", default=None, help="only entries of this brand ('' for global ones)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON array")
@pass_ctx
def dnc_list(ctx, number, brand, as_json):
    """The active entries (all, or NUMBER's): number, brand or * for every brand, added at, by, reason."""
    from rpo_guard.register.lists import dnc_list as do
    from rpo_guard.rules.numbers import InvalidNumber
    try:
        rows = do(ctx.cfg, number, brand)
    except InvalidNumber as exc:
        raise _number_error(exc) from None
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['number']}\t{r['brand'] or '*'}\t{r['added_at']}\t{r['added_by']}\t{r['reason']}")


dnc.add_command(dnc_import)
