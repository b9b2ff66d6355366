"""Benchmark of ``rpo-guard export-barred`` on a lead list of N leads (default 1 million; ``--leads N``).

One run, one register, three ways to decide the same list:

1. ``rpo-guard export-barred LIST --brand A --at T`` (the command, in a child
   process: start-up, reading, deciding and writing included);
2. ``rpo-guard check NUMBER --brand A --at T`` in a loop, as a dialer script
   would call it: timed on ``--check-sample`` leads, extrapolated to N;
3. the per-call lookup in-process: ``guard.check_call`` on one open Store
   (what the AGI does per call, without the AGI): timed on ``--call-sample``
   leads, extrapolated to N.

The register: the list's numbers consulted yesterday (every fifth one
registered), 1% of them on the do-not-contact list, 1% opted out; the list
writes its numbers in national, +39 and spaced forms, 0.5% invalid.
Figures in docs/integrations/export-barred.md.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, time as dtime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROME = ZoneInfo("Europe/Rome")


def number(i: int) -> str:
    body = (i * 2654435761) % 10**7
    return f"3{3 + i % 6}{i % 10}{body:07d}"


def lead_cell(i: int) -> str:
    n = number(i)
    if i % 200 == 7:
        return "12345"  # invalid
    return (n, f"+39{n}", f"{n[:3]} {n[3:6]} {n[6:]}", f"0039{n}")[i % 4]


def write_lines(path: Path, header: str, rows) -> None:
    with open(path, "w") as fh:
        fh.write(header + "\n")
        buf = []
        for r in rows:
            buf.append(r + "\n")
            if len(buf) >= 100_000:
                fh.write("".join(buf))
                buf.clear()
        fh.write("".join(buf))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leads", type=int, default=1_000_000)
    ap.add_argument("--check-sample", type=int, default=40)
    ap.add_argument("--call-sample", type=int, default=50_000)
    args = ap.parse_args()
    n = args.leads
    bindir = Path(sys.executable).parent
    rpo = str(bindir / "rpo-guard")

    from rpo_guard import config as config_mod
    from rpo_guard.audit.log import AuditLog
    from rpo_guard.register.schema import open_db
    from rpo_guard.sync import import_consents, import_consultation, import_dnc

    with tempfile.TemporaryDirectory(prefix="rpo-export-bench-") as tmp:
        tmp = Path(tmp)
        conf = tmp / "rpo-guard.conf"
        conf.write_text(f"[paths]\ndata_dir = {tmp / 'data'}\nlog_file = {tmp / 'failures.log'}\n")
        cfg = config_mod.load(str(conf))
        open_db(cfg.register_db).close()
        AuditLog(cfg.audit_db).close()
        today = datetime.now(ROME).date()
        t = time.perf_counter()
        write_lines(tmp / "consult.csv", "number,status",
                    (f"{number(i)},{'registered' if i % 5 == 0 else 'not_registered'}" for i in range(n)))
        import_consultation(cfg, tmp / "consult.csv", today - timedelta(days=1), "", who="bench")
        write_lines(tmp / "dnc.csv", "number,brand,reason", (f"{number(i)},,bench" for i in range(0, n, 100)))
        import_dnc(cfg, tmp / "dnc.csv", who="bench")
        write_lines(tmp / "consents.csv", "number,brand,kind,given_at",
                    (f"{number(i)},A,optout,{today - timedelta(days=3)}" for i in range(50, n, 100)))
        import_consents(cfg, tmp / "consents.csv", who="bench")
        leads = tmp / "leads.csv"
        write_lines(leads, "id,phone", (f"{i},{lead_cell(i)}" for i in range(n)))
        print(f"setup: register and a list of {n:,} leads in {time.perf_counter() - t:.1f} s", flush=True)

        day = today + timedelta(days=1)
        while day.weekday() >= 5:
            day += timedelta(days=1)
        at = datetime.combine(day, dtime(11, 0), ROME).isoformat()
        env = dict(os.environ, RPO_GUARD_CONFIG=str(conf))

        # 1. the command
        t = time.perf_counter()
        with open(tmp / "barred.csv", "w") as out:
            proc = subprocess.run([rpo, "export-barred", str(leads), "--brand", "A", "--at", at],
                                  stdout=out, stderr=subprocess.PIPE, text=True, env=env)
        export_s = time.perf_counter() - t
        if proc.returncode:
            raise SystemExit(f"export-barred failed: {proc.stderr}")
        barred = sum(1 for _ in open(tmp / "barred.csv")) - 1
        print(f"export-barred: {n:,} leads in {export_s:.2f} s ({n / export_s:,.0f} leads/s); "
              f"{barred:,} refused; {proc.stderr.strip()}", flush=True)

        rng = random.Random(1)
        # 2. `check` in a loop (one process per lead, as a shell loop runs it)
        sample = [lead_cell(rng.randrange(n)) for _ in range(args.check_sample)]
        t = time.perf_counter()
        for cell in sample:
            subprocess.run([rpo, "check", cell, "--brand", "A", "--at", at], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        per_check = (time.perf_counter() - t) / len(sample)
        check_s = per_check * n
        print(f"check in a loop: {per_check * 1000:.1f} ms per lead ({len(sample)} timed) -> "
              f"{check_s:,.0f} s for {n:,} leads ({check_s / 3600:.1f} h)", flush=True)

        # 3. the per-call lookup in-process
        from rpo_guard.guard import check_call
        from rpo_guard.register.store import Store
        cells = [lead_cell(rng.randrange(n)) for _ in range(min(args.call_sample, n))]
        when = datetime.fromisoformat(at)
        policy = cfg.policy._replace(caller_id_check=False)
        store = Store(cfg.register_db)
        t = time.perf_counter()
        for cell in cells:
            check_call(cfg, store, cell, "A", when, policy=policy)
        per_call = (time.perf_counter() - t) / len(cells)
        store.close()
        call_s = per_call * n
        print(f"per-call lookup (guard.check_call in-process): {per_call * 1e6:.1f} us per lead "
              f"({len(cells):,} timed) -> {call_s:.1f} s for {n:,} leads", flush=True)

        print(f"ratios: check loop / export-barred = {check_s / export_s:,.0f}x; "
              f"per-call lookup / export-barred = {call_s / export_s:.1f}x")


if __name__ == "__main__":
    main()
