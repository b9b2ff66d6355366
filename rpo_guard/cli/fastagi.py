"""``rpo-guard serve``: the FastAGI server (see :mod:`rpo_guard.fastagi`)."""
from __future__ import annotations

import sys

import click

from rpo_guard import config as config_mod


def _listen(ctx, param, value):
    if value is None:
        return None
    try:
        return config_mod._listen(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None


@click.command(short_help='Run the FastAGI server that Asterisk calls.')
@click.option("--listen", metavar="HOST:PORT", callback=_listen, default=None,
              help="address to bind (default: [fastagi] listen, 127.0.0.1:4573); port 0 picks a free one")
@click.pass_context
def serve(ctx, listen):
    """Run the FastAGI server: AGI(agi://127.0.0.1:4573/rpo_guard,NUMBER,BRAND).

    SIGTERM drains the calls in flight and exits; SIGHUP reopens the audit log
    and the register.
    """
    from rpo_guard.fastagi.server import ServeError, run_server

    cfg = ctx.obj.cfg
    try:
        code = run_server(cfg, listen)
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen or cfg.listen}: {exc}") from None
    sys.exit(code)
