"""``rpo-guard audit ...``: the auditor's tools (verify, digest, list, show, export, summary, report, prune)."""
from __future__ import annotations

import functools
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import click

from rpo_guard.rules.decision import REASONS


def _now(cfg) -> datetime:
    from zoneinfo import ZoneInfo
    return datetime.now(ZoneInfo(cfg.timezone))


def _open(cfg):
    from rpo_guard.audit.chain import open_ro
    try:
        return open_ro(cfg.audit_db)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None


def _user() -> str:
    import getpass
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _attempts(groups) -> str:
    n = sum(g["attempts"] for g in groups)
    return f"{n} attempt{'' if n == 1 else 's'}"


def _totals(groups) -> str:
    total = sum(g["attempts"] for g in groups)
    allowed = sum(g["attempts"] for g in groups if g["decision"] == "ALLOW")
    return f"total {total}: {allowed} allowed, {total - allowed} refused"


def _simulated_note(n: int) -> str:
    calls = "1 simulated call" if n == 1 else f"{n} simulated calls"
    return (f"{calls} (`rpo-guard simulate-call`, via simulate) not counted; "
            "`rpo-guard audit list` shows them")


def filter_options(f):
    """The filters shared by list, export, summary and report."""
    options = [
        click.option("--since", metavar="DATE|DATETIME", help="from this day or moment (inclusive)"),
        click.option("--until", metavar="DATE|DATETIME", help="up to this day (inclusive) or moment (exclusive)"),
        click.option("--number", metavar="NUMBER", help="the called number, in any format"),
        click.option("--brand", default=None, help="the brand exactly as the dialplan passed it"),
        click.option("--decision", type=click.Choice(["ALLOW", "BLOCK"], case_sensitive=False),
                     help="only allowed or only refused attempts"),
        click.option("--reason", "reasons", multiple=True, type=click.Choice(sorted(REASONS)),
                     help="a reason code (repeat for several)"),
        click.option("--caller-id", "callerid", metavar="CALLERID", help="the caller ID the call presented, as recorded"),
        click.option("--uniqueid", metavar="ID", help="Asterisk's uniqueid of the call"),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def make_filters(cfg, since=None, until=None, number=None, brand=None, decision=None, reasons=(),
                 callerid=None, uniqueid=None):
    from rpo_guard.audit.query import Filters, moment
    from rpo_guard.rules.numbers import InvalidNumber, normalize

    def when(text, end, hint):
        if not text:
            return None
        try:
            return moment(text, cfg.timezone, end)
        except ValueError:
            raise click.BadParameter(f"{text!r} is not an ISO 8601 date or date-time", param_hint=hint) from None

    e164 = None
    if number:
        try:
            e164 = normalize(number, cfg.strip_prefixes, cfg.default_region)
        except InvalidNumber as exc:
            raise click.BadParameter(str(exc), param_hint="--number") from None
    return Filters(since=when(since, False, "--since"), until=when(until, True, "--until"), e164=e164,
                   brand=brand, decision=decision.upper() if decision else None, reasons=tuple(reasons),
                   callerid=callerid, uniqueid=uniqueid)


def with_filters(f):
    """The filters, and --central/--box: the same command on the fleet's central trail."""
    @filter_options
    @click.option("--central", is_flag=True, help="fleet mode: every box's attempts as shipped to the central "
                                                  "PostgreSQL ([fleet] central), each naming its box")
    @click.option("--box", metavar="NAME", help="with --central: only this box's attempts")
    @click.pass_obj
    @functools.wraps(f)
    def wrapper(obj, since, until, number, brand, decision, reasons, callerid, uniqueid, central, box, **kw):
        if box is not None and not central:
            raise click.UsageError("--box names a box of the fleet's central trail: give --central too")
        filters = make_filters(obj.cfg, since, until, number, brand, decision, reasons, callerid, uniqueid)
        return f(obj, replace(filters, box=box), central=central, **kw)
    return wrapper


@contextmanager
def _trail(cfg, central: bool, box: str | None = None):
    """(connection, source): this box's audit.db, or with --central the fleet's centre, read in one snapshot."""
    from rpo_guard.audit.query import LOCAL
    if not central:
        conn = _open(cfg)
        try:
            yield conn, LOCAL
        finally:
            conn.close()
        return
    from rpo_guard.fleet.audit import CENTRAL, boxes, known, snapshot
    conn = _central(cfg)
    try:
        if box is not None and not known(conn, box):
            names = ", ".join(boxes(conn)) or "none yet"
            raise click.ClickException(f"--box {box}: no such box at the centre ([fleet] central); "
                                       f"boxes with audit rows: {names}")
        with snapshot(conn):
            yield conn, CENTRAL
    finally:
        conn.close()


@click.group("audit", short_help='Verify, list, explain, export and report attempts.')
def audit():
    """The audit log: verify, digest, list, show, export, summary, report, prune."""


@audit.command(short_help='Walk the hash chain; report the first broken link.')
@click.option("--digest", "digests", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="a file of digests (`audit digest` output) to check the log against; repeatable")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--central", is_flag=True, help="fleet mode: every box's chain as shipped to the central PostgreSQL")
@click.pass_obj
def verify(obj, digests, as_json, central):
    """Walk the hash chain; report the first broken link.

    Exit status: 0 intact, 1 broken (row edited, deleted, inserted or
    reordered, or a digest that no longer matches), 2 usage error.
    """
    from rpo_guard.audit.chain import check_signature
    from rpo_guard.audit.chain import verify as do_verify

    cfg = obj.cfg
    if central:
        _verify_central(cfg, as_json)
    anchors = []
    key = _key(cfg)
    for path in digests:
        try:
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            for i, ln in enumerate(lines, 1):
                d = json.loads(ln)
                if key is not None and not check_signature(d, key):
                    click.echo(f"BROKEN: {path}:{i}: the digest's signature does not match (edited digest "
                               "or another key)")
                    sys.exit(1)
                anchors.append(d)
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{path}: not a digest file ({exc})") from None
    conn = _open(cfg)
    try:
        res = do_verify(conn, anchors)
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(res.as_dict(), sort_keys=True))
    else:
        click.echo(res.summary())
        for note in res.notes:
            click.echo(f"  note: {note}")
    sys.exit(0 if res.ok else 1)


def _central(cfg):
    """A connection to the fleet's centre, or a usage error."""
    from rpo_guard.fleet.schema import CentralError, check, connect
    if not cfg.central:
        raise click.UsageError("--central needs fleet mode: set [fleet] central in the configuration")
    try:
        conn = connect(cfg.central, autocommit=True)
        check(conn)
        return conn
    except CentralError as exc:
        raise click.ClickException(f"[fleet] central: {exc}") from None


def _verify_central(cfg, as_json) -> None:
    from rpo_guard.fleet.audit import verify_all
    conn = _central(cfg)
    try:
        results = verify_all(conn)
    finally:
        conn.close()
    ok = all(r.ok for r in results.values())
    if as_json:
        click.echo(json.dumps({"ok": ok, "boxes": {b: r.as_dict() for b, r in results.items()}}, sort_keys=True))
    else:
        if not results:
            click.echo("no box has shipped audit rows yet")
        for box, res in results.items():
            click.echo(f"box {box}: {res.summary()}")
            for note in res.notes:
                click.echo(f"  note: {note}")
    sys.exit(0 if ok else 1)


def _key(cfg) -> bytes | None:
    from rpo_guard.audit.chain import read_key
    if not cfg.digest_key_file:
        return None
    try:
        return read_key(cfg.digest_key_file)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"[audit] digest_key_file: {exc}") from None


@audit.command(short_help="Print the day's digest: counts and the chain's hash.")
@click.option("--date", "day", metavar="YYYY-MM-DD", help="the day (default: yesterday in the rules' timezone)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="append the digest line to this file")
@click.pass_obj
def digest(obj, day, out):
    """Print the day's digest: counts and the chain's hash at the day's end.

    One JSON line. Signed with HMAC-SHA256 when [audit] digest_key_file is
    set; either way, keep it away from this machine (mail, print, another
    system): `audit verify --digest FILE` later proves the log up to that
    row was not rewritten.
    """
    from rpo_guard.audit.chain import make_digest

    cfg = obj.cfg
    if day:
        try:
            day = date.fromisoformat(day).isoformat()
        except ValueError:
            raise click.BadParameter(f"{day!r} is not a date YYYY-MM-DD", param_hint="--date") from None
    else:
        day = (_now(cfg).date() - timedelta(days=1)).isoformat()
    key = _key(cfg)
    conn = _open(cfg)
    try:
        d = make_digest(conn, day, _now(cfg).isoformat(timespec="seconds"), key)
    finally:
        conn.close()
    line = json.dumps(d, sort_keys=True, ensure_ascii=False)
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    click.echo(line)
    if key is None:
        click.echo("unsigned digest ([audit] digest_key_file not set): anchor it outside this machine", err=True)


@audit.command("list", short_help='List attempts (oldest first) matching the filters.')
@with_filters
@click.option("--limit", type=int, default=100, show_default=True, help="the newest N matching attempts; 0 = all")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line (the export columns)")
def list_(obj, filters, limit, as_json, central):
    """List attempts (oldest first) matching the filters.

    With --central, every box's attempts at the centre, in time order, each line starting
    with its box (the JSON objects have a "box" field).
    """
    from rpo_guard.audit.query import select

    with _trail(obj.cfg, central, filters.box) as (conn, source):
        if limit:
            rows = select(conn, filters, limit=limit, newest_first=True, source=source).fetchall()[::-1]
        else:
            rows = select(conn, filters, source=source)
        n = 0
        for r in rows:
            n += 1
            d = dict(zip(source.columns, r))
            if as_json:
                click.echo(json.dumps(d, ensure_ascii=False))
            else:
                click.echo((f"{d['box']:<12} " if central else "")
                           + f"{d['id']:>8}  {d['at']}  {d['decision']:<5} {d['reason']:<21} "
                           f"{d['e164'] or repr(d['dialed']):<16} brand={d['brand'] or '-'} "
                           f"cid={d['callerid'] or '-'} uid={d['uniqueid'] or '-'}")
    if not as_json:
        click.echo(f"({n} attempt{'s' if n != 1 else ''})", err=True)


@audit.command(short_help='Explain one attempt: the rule, the records, the link.')
@click.argument("row_id", metavar="ID", type=int)
@click.pass_obj
def show(obj, row_id):
    """Explain one attempt in words: the rule, the consultation or consent, the evidence."""
    from rpo_guard.audit.query import explain

    cfg = obj.cfg
    conn = _open(cfg)
    try:
        lines = explain(conn, row_id, cfg.register_db)
    finally:
        conn.close()
    if lines is None:
        raise click.ClickException(f"no attempt {row_id} in {cfg.audit_db}")
    click.echo("\n".join(lines))


@audit.command(short_help='Stream matching attempts as CSV or JSON lines.')
@with_filters
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True,
              help="csv: a header line, UTF-8; jsonl: one JSON object per line")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="file to write (default: stdout)")
def export(obj, filters, fmt, out, central):
    """Stream the matching attempts as CSV or JSON lines (columns in docs/auditor.md).

    With --central, every box's attempts at the centre, with a first column "box".
    """
    from rpo_guard.audit.query import export as do_export

    with _trail(obj.cfg, central, filters.box) as (conn, source):
        if out:
            with open(out, "w", encoding="utf-8", newline="") as fh:
                n = do_export(conn, filters, fmt, fh, source)
        else:
            n = do_export(conn, filters, fmt, sys.stdout, source)
            sys.stdout.flush()
    click.echo(f"exported {n} attempt{'s' if n != 1 else ''}" + (f" to {out}" if out else ""), err=True)


@audit.command(short_help="Counts per day, brand, decision and reason.")
@with_filters
@click.option("--json", "as_json", is_flag=True, help="a JSON list of {day, brand, decision, reason, attempts} "
                                                "(with --central, {box, day, ...})")
def summary(obj, filters, as_json, central):
    """Counts per day, brand, decision and reason (with --central, per box first)."""
    from rpo_guard.audit.query import count
    from rpo_guard.audit.query import summary as do_summary

    with _trail(obj.cfg, central, filters.box) as (conn, source):
        groups = do_summary(conn, replace(filters, simulated=False), source)
        simulated = count(conn, replace(filters, simulated=True), source)
        # the centre holds what each box still had when it joined; prunes are each box's own
        pruned = (0, None) if central else \
            conn.execute("SELECT coalesce(sum(rows), 0), max(last_at) FROM checkpoints").fetchone()
    if as_json:
        click.echo(json.dumps(groups, ensure_ascii=False))
        return
    lead = f"{'box':<12} " if central else ""
    click.echo(f"{lead}{'day':<10}  {'brand':<16} {'decision':<8} {'reason':<21} {'attempts':>8}")
    for g in groups:
        lead = f"{g['box']:<12} " if central else ""
        click.echo(f"{lead}{g['day']:<10}  {(g['brand'] or '-'):<16} {g['decision']:<8} {g['reason']:<21} "
                   f"{g['attempts']:>8}")
    for box in sorted({g["box"] for g in groups}) if central else ():
        click.echo(f"box {box}: {_totals([g for g in groups if g['box'] == box])}")
    click.echo(_totals(groups))
    if simulated:
        click.echo(f"({_simulated_note(simulated)})")
    if pruned[0]:
        click.echo(f"({pruned[0]} older attempts, up to {pruned[1]}, were pruned; their counts are kept in the "
                   "checkpoints table)")


@audit.command(short_help='Write one self-contained HTML report.')
@with_filters
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="the HTML file to write")
@click.option("--title", default="rpo_guard: call attempts audit report", show_default=True,
              help="the report's heading")
def report(obj, filters, out, title, central):
    """Write one self-contained HTML report (chart, top reasons, coverage, verify result).

    With --central, of every box's attempts at the centre: each box's chain verified,
    and a table of the counts per box.
    """
    from rpo_guard.audit.chain import verify as do_verify
    from rpo_guard.audit.query import count
    from rpo_guard.audit.query import summary as do_summary
    from rpo_guard.audit.report import render

    cfg = obj.cfg
    boxes = res = None
    checkpoints = []
    with _trail(cfg, central, filters.box) as (conn, source):
        groups = do_summary(conn, replace(filters, simulated=False), source)
        simulated = count(conn, replace(filters, simulated=True), source)
        if central:
            from rpo_guard.fleet.audit import verify_all
            boxes = verify_all(conn, filters.box)
        else:
            res = do_verify(conn)
            checkpoints = conn.execute("SELECT id, pruned_at, pruned_by, rows, first_id, last_id, before"
                                       " FROM checkpoints ORDER BY id").fetchall()
    period = f"{filters.since or 'start'} to {filters.until or 'now'}"
    text = render(groups=groups, verify_result=res, boxes=boxes, title=title,
                  generated_at=_now(cfg).isoformat(timespec="seconds"), period=period, register_db=cfg.register_db,
                  checkpoints=checkpoints, notes=[_simulated_note(simulated)] if simulated else [])
    Path(out).write_text(text, encoding="utf-8")
    if central:
        broken = [b for b, r in boxes.items() if not r.ok]
        state = f"trail BROKEN (box {', '.join(broken)})" if broken else f"{len(boxes)} box chain(s) intact"
    else:
        state = f"log {'intact' if res.ok else 'BROKEN'}"
    click.echo(f"report written to {out} ({_attempts(groups)}; {state})")


@audit.command(short_help='Remove old attempts, keeping the rest verifiable.')
@click.option("--before", metavar="DATE|DATETIME",
              help="remove attempts before this day or moment (default: [audit] retention_days ago)")
@click.option("--dry-run", is_flag=True, help="only say what would be removed")
@click.pass_obj
def prune(obj, before, dry_run):
    """Remove old attempts, keeping the rest verifiable (a checkpoint is recorded)."""
    from rpo_guard.audit.chain import PruneRefused, prune_plan
    from rpo_guard.audit.chain import prune as do_prune
    from rpo_guard.audit.log import AuditLog
    from rpo_guard.audit.query import moment

    cfg = obj.cfg
    now = _now(cfg)
    if before:
        try:
            cut = moment(before, cfg.timezone)
        except ValueError:
            raise click.BadParameter(f"{before!r} is not an ISO 8601 date or date-time", param_hint="--before") from None
    elif cfg.retention_days:
        cut = moment((now.date() - timedelta(days=cfg.retention_days)).isoformat(), cfg.timezone)
    else:
        raise click.UsageError("give --before DATE or set [audit] retention_days")
    if datetime.fromisoformat(cut) > now:
        raise click.BadParameter(f"{cut} is in the future", param_hint="--before")
    if not os.path.isfile(cfg.audit_db):
        raise click.ClickException(f"{cfg.audit_db}: audit database not found")
    log = AuditLog(cfg.audit_db, busy_timeout_ms=max(cfg.audit_busy_timeout_ms, 5000), file_mode=cfg.file_mode,
                   synchronous=cfg.synchronous)
    try:
        n, last = prune_plan(log.conn, cut)
        if dry_run or not n:
            click.echo(f"{'would remove' if n else 'nothing to remove:'} {n} attempt(s) before {cut}"
                       + (f" (ids up to {last})" if n else ""))
            return
        try:
            res = do_prune(log.conn, cut, now.isoformat(timespec="seconds"), _user())
        except PruneRefused as exc:
            raise click.ClickException(f"prune refused: {exc}") from None
    finally:
        log.close()
    click.echo(f"removed {res.rows} attempt(s) before {cut} (ids {res.first_id}..{res.last_id}); "
               f"checkpoint(s) {res.checkpoints[0]}..{res.checkpoints[-1]} recorded")
