"""``rpo-guard selftest``: the guard checked end to end in this box's running Asterisk
(see :mod:`rpo_guard.selftest`)."""
from __future__ import annotations

import sys

import click

from .context import pass_ctx


@click.command(short_help="Check the guard end to end in the running Asterisk.")
@click.option("--asterisk", "binary", default="asterisk", metavar="PATH", show_default=True,
              help="the asterisk binary whose control socket is used (asterisk -rx)")
@click.option("-C", "--asterisk-conf", "asterisk_conf", default=None, metavar="PATH",
              help="the running Asterisk's asterisk.conf, when not the default one")
@click.option("--brand", default="", help="the brand of the test calls (default: none)")
@click.option("--caller-id", "caller_id", default="0612340000", show_default=True,
              help="the caller ID of the test calls (declared for the brand, if the brand has a list)")
@click.option("--number", default=None,
              help="the number the allowed test call dials (default: one the register allows now)")
@click.option("--timeout", default=20.0, show_default=True, help="seconds each test call may take")
@pass_ctx
def selftest(ctx, binary, asterisk_conf, brand, caller_id, number, timeout):
    """Check the guard in the running Asterisk: subroutine loaded, AGI or server there,
    and test calls that never reach a trunk (one refused, one forced failure, one allowed).

    The test calls' audit rows are marked (via ...-selftest) and left out of the auditor's
    summary and report. Exit status: 0 OK, 1 WARNING, 2 FAILURE.
    """
    from rpo_guard.selftest import AsteriskCLI, Selftest, verdict

    checks = Selftest(ctx.cfg, AsteriskCLI(binary, asterisk_conf, timeout), brand=brand, caller_id=caller_id,
                      number=number, timeout=timeout).run()
    for c in checks:
        click.echo(f"{c.level:8s} {c.name}: {c.detail}")
    code = verdict(checks)
    click.echo({0: "selftest: OK", 1: "selftest: WARNING", 2: "selftest: FAILURE"}[code])
    sys.exit(code)
