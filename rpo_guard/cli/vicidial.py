"""``rpo-guard vicidial``: VICIdial's DNC lists kept in step with rpo_guard's (docs/integrations/vicidial.md)."""
from __future__ import annotations

import click

from .context import pass_ctx


@click.group()
def vicidial():
    """VICIdial's DNC lists, both ways.

    Settings: the [vicidial] section (docs/integrations/vicidial.md).
    """


@vicidial.command("sync")
@click.option("--pull", "do_pull", is_flag=True, help="only VICIdial's DNC lists -> rpo_guard's do-not-contact list")
@click.option("--push", "do_push", is_flag=True,
              help="only rpo_guard's do-not-contact entries and opt-outs -> VICIdial's DNC lists")
@pass_ctx
def vicidial_sync(ctx, do_pull, do_push):
    """Pull, then push (or only the one asked).

    Incremental: a second run changes nothing.

    Exit status: 0 done, 1 VICIdial's database or the register could not be used.
    """
    from rpo_guard.register.schema import SchemaError
    from rpo_guard.vicidial import VicidialError, connect, pull, push

    cfg = ctx.cfg
    if not do_pull and not do_push:
        do_pull = do_push = True
    try:
        vconn = connect(cfg)
        try:
            if do_pull:
                click.echo(pull(cfg, vconn).summary())
            if do_push:
                click.echo(push(cfg, vconn).summary())
        finally:
            vconn.close()
    except (VicidialError, SchemaError) as exc:
        raise click.ClickException(str(exc)) from None
