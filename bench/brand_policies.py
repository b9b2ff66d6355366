"""FastAGI cost of the attempt cap: `rpo-guard serve` with the cap off and on, same run, interleaved.

    python bench/brand_policies.py [--numbers 1000000] [--audit-rows 1000000] [--seconds 1] [--rounds 3]
                                   [--concurrency 1,16] [--rates ''] [--max-attempts 1000] [--brand-cap]
                                   [--same-numbers] [--control]

The machinery of bench/fastagi_load.py (register and audit log built once and
cached in --data-dir, the load generator that speaks FastAGI as Asterisk does,
server CPU read from /proc): two `rpo-guard serve` processes, each with a data
folder of its own holding a copy of the same register and audit log, one with
the shipped defaults (no cap), one with ``[attempts] max_attempts =
--max-attempts`` (and with --brand-cap also a brand cap of the same size: two
counts per call). Each round measures one then the other (the order turns from
round to round), so a noisy moment on the shared machine hits both. The calls
are random numbers of the register (80 % allowed: 80 % of the calls count their
attempts in the audit log, which starts with --audit-rows rows). Every round
draws other numbers (the servers the same ones within a round), so a number has
the few rows a number has in use; with --same-numbers every round calls the
same ones, and after 25 rounds each of them has some 25 allowed attempts to
count, more than a number under a real cap can have (an earlier form of this
bench). The default
cap is never reached, so both servers take the same decisions and the
difference is the cost of counting. Prints the CPU per call and the latencies
of each, and the ratio cap on / cap off (target <= 1.1), as a ratio of the
medians and as the median of each round's ratio. --control adds a third
server, identical to the first, measured in the same rounds: the ratio of the
two cap-off servers is what the machine's noise alone makes of a ratio.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastagi_load as fl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numbers", type=int, default=1_000_000)
    ap.add_argument("--audit-rows", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--rates", default="", help="open-loop points, calls/s")
    ap.add_argument("--max-attempts", type=int, default=1000, help="the cap (default: never reached)")
    ap.add_argument("--brand-cap", action="store_true", help="the cap-on server also has a brand cap (two counts)")
    ap.add_argument("--same-numbers", action="store_true",
                    help="every round calls the same numbers (each then gains a row per round and server)")
    ap.add_argument("--control", action="store_true",
                    help="a third server, cap off too, measured in the same rounds: off/off shows the noise")
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()
    data = args.data_dir or Path(tempfile.gettempdir()) / f"rpo-guard-bench-brands-{args.numbers}"
    fl.build_register(data, args.numbers)
    kept = fl.build_audit_log(data, args.audit_rows)
    conduct = "[conduct]\nweekday_hours = 00:00-23:59\nreduced_hours = 00:00-23:59\n"
    cap = f"[attempts]\nmax_attempts = {args.max_attempts}\nwindow_days = 30\n"
    if args.brand_cap:
        cap += f"[brand {fl.BRAND}]\nmax_attempts = {args.max_attempts}\nattempt_window_days = 7\n"
    rpo_guard = str(Path(sys.executable).parent / "rpo-guard")
    servers = {}
    kinds = [("cap off", ""), ("cap on", cap)] + ([("control", "")] if args.control else [])
    for name, extra in kinds:
        # Each server has a data folder of its own (a copy of the register, and of the audit log
        # it starts from), as a box has: sharing one audit.db, each server's page cache would be
        # thrown away whenever another one wrote, i.e. at the start of every round.
        own = data / f"server-{name.replace(' ', '-')}"
        shutil.rmtree(own, ignore_errors=True)
        own.mkdir()
        with sqlite3.connect(data / "rpo.db") as src, sqlite3.connect(own / "rpo.db") as dst:
            src.backup(dst)
        if kept is not None:
            shutil.copyfile(kept, own / "audit.db")
            with sqlite3.connect(own / "audit.db") as conn:
                conn.execute("PRAGMA journal_mode = WAL")
        conf = own / "rpo-guard.conf"
        conf.write_text(f"[paths]\ndata_dir = {own}\nlog_file = {own / 'failures.log'}\n{conduct}{extra}")
        env = dict(os.environ, RPO_GUARD_CONFIG=str(conf))
        servers[name] = fl.start([rpo_guard, "serve", "--listen", "127.0.0.1:0"], env, "listening on")
    print(f"FastAGI, attempt cap off and on: {args.numbers:,}-number register, audit log starting at "
          f"{max(args.audit_rows, 0):,} rows, {args.rounds} rounds of {args.seconds:g} s per point and server, "
          f"interleaved; {os.cpu_count()} CPUs shared with the generator"
          + ("; cap on = a global and a brand cap (two counts per allowed call)" if args.brand_cap else ""))
    print(f"{'point':>7} | {'off calls':>9} {'p50 ms':>6} {'p99 ms':>6} {'cpu us':>6} | {'on calls':>8} "
          f"{'p50 ms':>6} {'p99 ms':>6} {'cpu us':>6} | {'cpu on/off':>10} {'paired':>6}"
          + (f" | {'control cpu us':>14} {'control/off':>11} {'on/both off':>11}" if args.control else ""))
    points = [(int(x), 0) for x in args.concurrency.split(",") if x]
    points += [(0, float(x)) for x in args.rates.split(",") if x]
    try:
        for c, rate in points:
            runs = {name: [] for name in servers}
            names = list(servers)
            for r in range(args.rounds):  # the order turns each round: no server is always measured first
                for name in names[r % len(names):] + names[:r % len(names)]:
                    proc, port = servers[name]
                    runs[name].append(fl.measure(proc, port, c, args.seconds, args.numbers, data / "rpo.db", rate,
                                                 seed=None if args.same_numbers else 1000 * r + c))
            off, on = fl.median_of(runs["cap off"]), fl.median_of(runs["cap on"])
            n_off, n_on = (sum(r["n"] for r in runs[k]) for k in ("cap off", "cap on"))
            label = f"conc {c}" if not rate else f"@{rate:g}/s"
            errors = {k: sum(r["errors"] for r in rs) for k, rs in runs.items()}
            print(f"{label:>7} | {n_off:>9,} {off['p50']:>6.2f} {off['p99']:>6.2f} {off['cpu_us']:>6.0f} | "
                  f"{n_on:>8,} {on['p50']:>6.2f} {on['p99']:>6.2f} {on['cpu_us']:>6.0f} | "
                  f"{on['cpu_us'] / off['cpu_us']:>10.2f} {paired(runs, 'cap on'):>6.2f}"
                  + (f" | {fl.median_of(runs['control'])['cpu_us']:>14.0f} {paired(runs, 'control'):>11.2f} "
                     f"{on['cpu_us'] / fl.median_of(runs['cap off'] + runs['control'])['cpu_us']:>11.2f}"
                     if args.control else "")
                  + (f"  errors: {errors}" if any(errors.values()) else ""),
                  flush=True)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            proc.wait(60)
    for name, (proc, _) in servers.items():
        stopped = [line for line in proc.stderr.read().splitlines() if "stopped;" in line]
        print(f"{name}: " + (stopped[-1].split("stopped; ", 1)[1] if stopped else "(no stop line)"))
    with sqlite3.connect(data / "server-cap-on" / "audit.db") as conn:
        capped = conn.execute("SELECT count(*) FROM attempts WHERE reason = 'attempt_cap'").fetchone()[0]
    print(f"calls refused by the cap: {capped}")
    print("cpu us = server CPU (all threads) per call; medians of the rounds. p50/p99 over every call. "
          "cpu on/off = the cost per call of the cap (target <= 1.1), the ratio of the medians; paired = the "
          "median of each round's ratio"
          + ("; control/off = the same for two identical servers, cap off: what noise alone makes of a ratio; "
             "on/both off = cap on against the median of both cap-off servers' rounds." if args.control else "."))


def paired(runs: dict, name: str) -> float:
    """The median over the rounds of ``name``'s CPU per call / the cap-off server's in the same round."""
    ratios = sorted(a["cpu_us"] / b["cpu_us"] for a, b in zip(runs[name], runs["cap off"]))
    return ratios[len(ratios) // 2]


if __name__ == "__main__":
    main()
