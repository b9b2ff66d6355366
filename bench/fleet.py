"""Benchmark of fleet mode (issue 17): 8 boxes on this machine, one throwaway central PostgreSQL.

Each box is a data folder with its config and its agent (`rpo-guard fleet agent`, a real
process). Prints:

1. opt-out propagation: an opt-out taken on box A during a call (the dialplan path:
   applied on A, queued in its outbox, forwarded by A's agent), then the time until the
   first refused call on every other box: p50 / p99 over every (opt-out, box) pair
   (target p99 <= 1 s);
2. a consultation of --numbers numbers (default 10,000,000) entered once at the centre
   (every agent stopped) and landed by boxes 0-3 each ALONE, one after the other (the
   figure of one box per host), then by boxes 4-7 AT ONCE (they share this machine's
   cores): rows/s per box, as a ratio to a local (single-box) import of the same file
   in the same run, timed before and after the landings, the faster one (target >= 0.8x);
3. audit shipping: --calls-per-second (default 5,000) attempts a second written to the
   boxes' audit.db for --seconds, lag from the write to the row at the centre: p50/p99,
   and the p99 of the first and last thirds of the run (a lag that grows shows there);
4. the per-call check cost (Store.lookup + decide) on a replica against a single box
   with a copy of its rows: --rounds rounds of --lookups calls each, interleaved in one
   process (order swapped every round): median and best of each, median of the ratios.

The load average (1, 5, 15 min) is printed with every figure: the machine may be shared.
Usage: python bench/fleet.py [--numbers 10000000] [--boxes 8] [--optouts 40] [--parts 1234]
Needs PostgreSQL's server (initdb) and psycopg; as root the cluster runs as postgres.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sync_import import generate, number  # noqa: E402

from rpo_guard import config as config_mod  # noqa: E402
from rpo_guard.fleet.sandbox import Cluster, find_bindir, wait_for  # noqa: E402

ROME = ZoneInfo("Europe/Rome")


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")


class Box:
    def __init__(self, root: Path, name: str, central: str):
        self.name, self.root = name, root
        root.mkdir(parents=True)
        self.conf = root / "rpo-guard.conf"
        fleet = f"[fleet]\ncentral = {central}\nbox = {name}\nheartbeat_seconds = 1\n" if central else ""
        self.conf.write_text(f"[paths]\ndata_dir = {root / 'data'}\nlog_file = {root / 'failures.log'}\n{fleet}"
                             "[conduct]\ncalling_hours = off\ncaller_id_check = off\n")
        self.cfg = config_mod.load(str(self.conf))
        self.cli("init")
        self.agent = None

    def cli(self, *args):
        return subprocess.run([sys.executable, "-m", "rpo_guard.cli.main", "--config", str(self.conf), *args],
                              check=True, capture_output=True, text=True)

    def start(self):
        log = open(self.root / "agent.log", "ab")
        self.agent = subprocess.Popen([sys.executable, "-m", "rpo_guard.cli.main", "--config", str(self.conf),
                                       "fleet", "agent"], stdout=log, stderr=log)

    def stop(self):
        if self.agent and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(30)

    def store(self):
        from rpo_guard.register.store import Store
        return Store(self.cfg.register_db, 5000)

    def replica(self):
        import sqlite3
        from rpo_guard.fleet.replica import state
        c = sqlite3.connect(f"file:{self.cfg.register_db}?mode=ro", uri=True, timeout=10)
        try:
            return state(c)
        finally:
            c.close()


def consult_file(tmp: Path, n: int) -> Path:
    path = tmp / f"consult-{n}.csv"
    if not path.exists():
        generate(path, n)
    return path


def optout_propagation(boxes, optouts: int):
    from rpo_guard.guard import check_call
    from rpo_guard.register.lists import dnc_add
    a, others = boxes[0], boxes[1:]
    stores = {b.name: b.store() for b in others}
    samples = []
    for k in range(optouts):
        num = f"+3933{k:08d}"
        t0 = time.perf_counter()
        dnc_add(a.cfg, num, source="dialplan")  # what `rpo-guard dnc add --source dialplan` does
        pending = {b.name: b for b in others}
        deadline = t0 + 30
        while pending and time.perf_counter() < deadline:
            for name, b in list(pending.items()):
                if check_call(b.cfg, stores[name], num).verdict.reason == "internal_dnc":
                    samples.append(time.perf_counter() - t0)
                    del pending[name]
            time.sleep(0.0005)
        if pending:
            print(f"  opt-out {num}: not seen on {sorted(pending)} within 30 s")
    for s in stores.values():
        s.close()
    return samples


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def wait_landed(b, head: int, timeout: float = 3600) -> float:
    """Seconds until box ``b`` has applied past ``head`` with no consultation pending."""
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        st = b.replica()
        if st["last_seq"] > head and st["pending_batches"] == 0:
            return time.perf_counter() - t
        if b.agent is not None and b.agent.poll() is not None:
            raise RuntimeError(f"{b.name}: agent exited: {(b.root / 'agent.log').read_text()[-1500:]}")
        time.sleep(0.05)
    raise RuntimeError(f"{b.name}: not landed within {timeout} s")


def consultation(tmp, boxes, n):
    """The consultation entered once at the centre while every agent is stopped, then landed
    by boxes 0-3 one after the other (each box alone: the figure of one box per host) and
    by boxes 4-7 at once (they share this machine's cores); each against the local import
    of the same file on a single box in the same run, timed before and after the landings
    (the faster of the two is the baseline)."""
    from rpo_guard.sync import import_consultation
    path = consult_file(tmp, n)
    day = datetime.now(ROME).date() - timedelta(days=1)
    for b in boxes:
        b.stop()

    def local_import(label):
        single = Box(tmp / f"single-{label}", f"single-{label}", "")
        print(f"   local import {label} ({load()})", flush=True)
        t = time.perf_counter()
        import_consultation(single.cfg, path, day)
        seconds = time.perf_counter() - t
        print(f"   local import {label}: {seconds:.1f} s ({load()})", flush=True)
        shutil.rmtree(single.root, ignore_errors=True)
        return seconds

    local_s = [local_import("before")]
    heads = {b.name: b.replica()["last_seq"] for b in boxes}
    print(f"   central import ({load()})", flush=True)
    t = time.perf_counter()
    res = import_consultation(boxes[0].cfg, path, day)
    central_s = time.perf_counter() - t
    print(f"   central import: {central_s:.1f} s ({load()})", flush=True)
    alone, at_once = {}, {}
    for b in boxes[:4]:
        print(f"   {b.name} landing alone ({load()})", flush=True)
        b.start()
        alone[b.name] = (wait_landed(b, heads[b.name]), load())
        b.stop()
        print(f"   {b.name} landed it alone in {alone[b.name][0]:.1f} s ({alone[b.name][1]})", flush=True)
    group = boxes[4:8]
    print(f"   {', '.join(b.name for b in group)} landing at once ({load()})", flush=True)
    t = time.perf_counter()
    for b in group:
        b.start()
    for b in group:
        wait_landed(b, heads[b.name])
        at_once[b.name] = (time.perf_counter() - t, load())
        print(f"   {b.name} landed it at once with the others in {at_once[b.name][0]:.1f} s ({at_once[b.name][1]})",
              flush=True)
    for b in group:
        b.stop()
    local_s.append(local_import("after"))  # the machine's load moves: the baseline measured on both sides
    for b in boxes:
        if b.agent is None or b.agent.poll() is not None:
            b.start()
    return res.rows, min(local_s), local_s, central_s, alone, at_once


def audit_shipping(boxes, rate: int, seconds: float, central: str):
    import psycopg
    from rpo_guard.audit.log import AuditLog
    per_box = rate / len(boxes)
    written: dict[str, list] = {b.name: [] for b in boxes}  # (id, time written)
    stop = threading.Event()

    def writer(b):
        log = AuditLog(b.cfg.audit_db)
        start = time.perf_counter()
        sent = 0
        i = 0
        while not stop.is_set():
            due = int((time.perf_counter() - start) * per_box) - sent
            if due > 0:
                rows = [{"at": datetime.now(ROME).isoformat(timespec="milliseconds"), "uniqueid": f"{i}.{j}",
                         "channel": "SIP/x", "callerid": "0612345678", "accountcode": "", "brand": "",
                         "dialed": "3331234567", "e164": "+393331234567", "decision": "ALLOW",
                         "reason": "not_registered", "basis": {"kind": "consultation"}, "detail": "",
                         "latency_ms": 0.5, "via": "fastagi"} for j in range(due)]
                ids = log.append_many(rows)
                now = time.perf_counter()
                written[b.name].append((ids[-1], len(ids), now))
                sent += due
                i += 1
            time.sleep(0.005)
        log.close()

    threads = [threading.Thread(target=writer, args=(b,)) for b in boxes]
    for t in threads:
        t.start()
    seen: dict[str, list] = {b.name: [] for b in boxes}  # (max id at the centre, time seen)
    pg = psycopg.connect(central, autocommit=True)
    # one index probe per box (a GROUP BY over box_attempts would scan it all, slower as it grows)
    tops = "SELECT b.box, (SELECT max(id) FROM box_attempts a WHERE a.box = b.box) FROM unnest(%s::text[]) b(box)"
    names = [b.name for b in boxes]
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        now = time.perf_counter()
        for box, top in pg.execute(tops, (names,)):
            seen[box].append((top, now))
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join()
    deadline = time.perf_counter() + 60
    totals = {b.name: written[b.name][-1][0] if written[b.name] else 0 for b in boxes}
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        rows = {k: v or 0 for k, v in pg.execute(tops, (names,)).fetchall()}
        for box, top in rows.items():
            seen[box].append((top, now))
        if all(rows.get(b, 0) >= totals[b] for b in totals):
            break
        time.sleep(0.02)
    pg.close()
    lags, rows_written = [], 0
    for box, writes in written.items():
        obs = seen[box]
        j = 0
        for last_id, count, at in writes:
            while j < len(obs) and (obs[j][0] or 0) < last_id:
                j += 1
            if j < len(obs):
                lags.extend([(at, obs[j][1] - at)] * count)
            rows_written += count
    lags.sort()  # in the order written, so that the first and last thirds of the run can be compared
    return rows_written, [lag for _, lag in lags]


def lookup_cost(boxes, tmp, calls: int, n_rounds: int):
    """Per-call Store.lookup + decide on a replica vs a single box with the same rows."""
    import sqlite3
    from rpo_guard.guard import check_call
    from rpo_guard.register.store import Store
    replica = boxes[1]
    single = tmp / "single-copy"
    single.mkdir()
    src = sqlite3.connect(replica.cfg.register_db)
    dst = sqlite3.connect(single / "rpo.db")
    src.backup(dst)
    for t in ("fleet_replica", "fleet_outbox", "fleet_pending"):
        dst.execute(f"DROP TABLE {t}")
    dst.commit()
    dst.close()
    src.close()
    scfg = replica.cfg._replace(data_dir=str(single), central="")
    numbers = [f"+39{number(i)}" if not number(i).startswith("0") else f"+39{number(i)}" for i in range(2000)]

    replica_store, single_store = Store(replica.cfg.register_db, 5000), Store(str(single / "rpo.db"), 5000)
    for n in numbers[:500]:
        check_call(replica.cfg, replica_store, n)
        check_call(scfg, single_store, n)

    def run(cfg, store, start):
        t = time.perf_counter()
        for k in range(start, start + calls):
            check_call(cfg, store, numbers[k % len(numbers)])
        return (time.perf_counter() - t) / calls

    # Interleaved in one process, the order swapped every round (ABBA), both on the same
    # numbers: a burst of load hits both sides of a round alike.
    rounds = []
    for i in range(n_rounds):
        start = (i * calls) % len(numbers)
        if i % 2:
            s_ = run(scfg, single_store, start)
            r = run(replica.cfg, replica_store, start)
        else:
            r = run(replica.cfg, replica_store, start)
            s_ = run(scfg, single_store, start)
        rounds.append((r, s_))
    replica_store.close()
    single_store.close()
    return rounds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numbers", type=int, default=10_000_000)
    ap.add_argument("--boxes", type=int, default=8)
    ap.add_argument("--optouts", type=int, default=40)
    ap.add_argument("--calls-per-second", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--lookups", type=int, default=2000, help="calls per side per round")
    ap.add_argument("--rounds", type=int, default=60, help="interleaved rounds of the lookup cost")
    ap.add_argument("--parts", default="1234", help="which measures to run (digits 1-4)")
    args = ap.parse_args()
    parts = set(args.parts)
    bindir = find_bindir()
    if bindir is None:
        sys.exit("no PostgreSQL server (initdb) found: apt-get install postgresql")
    tmp = Path(tempfile.mkdtemp(prefix="rpo-fleet-bench-"))
    cluster = Cluster(bindir, fsync=True)
    boxes = []
    try:
        cluster.start()
        central = cluster.new_database("bench")
        boxes = [Box(tmp / f"box{i}", f"box{i}", central) for i in range(args.boxes)]
        # a small shared consultation so that lookups have something to read
        from rpo_guard.sync import import_consultation
        small = tmp / "small.csv"
        generate(small, 20000)
        import_consultation(boxes[0].cfg, small, datetime.now(ROME).date() - timedelta(days=2))
        for b in boxes:
            b.start()
        try:
            wait_for(lambda: all(b.replica()["pending_batches"] == 0 and b.replica()["last_seq"] >= 1
                                 for b in boxes), timeout=300, what="boxes current")
        except AssertionError:
            for b in boxes:
                print(b.name, b.replica(), (b.root / "agent.log").read_text()[-1500:])
            raise
        print(f"fleet bench: {args.boxes} boxes, PostgreSQL {bindir}, {os.cpu_count()} CPUs, "
              f"{load()}", flush=True)

        if "1" in parts:
            samples = optout_propagation(boxes, args.optouts)
            print(f"1. opt-out on box0 -> first refused call on each of {len(boxes) - 1} other boxes: "
                  f"{len(samples)} samples, p50 {pct(samples, 50) * 1000:.0f} ms, p99 {pct(samples, 99) * 1000:.0f} ms, "
                  f"max {max(samples) * 1000:.0f} ms (target p99 <= 1000 ms; {load()})", flush=True)

        if "3" in parts:
            written, lags = audit_shipping(boxes, args.calls_per_second, args.seconds, central)
            third = max(1, len(lags) // 3)
            print(f"3. audit shipping: {written:,} rows in {args.seconds:.0f} s ({written / args.seconds:,.0f}/s over "
                  f"{len(boxes)} boxes): lag p50 {pct(lags, 50) * 1000:.0f} ms, p99 {pct(lags, 99) * 1000:.0f} ms, "
                  f"max {max(lags) * 1000:.0f} ms; p99 of the first third {pct(lags[:third], 99) * 1000:.0f} ms, "
                  f"of the last third {pct(lags[-third:], 99) * 1000:.0f} ms ({load()})", flush=True)

        if "2" in parts:
            rows, local_s, both, central_s, alone, at_once = consultation(tmp, boxes, args.numbers)
            local_rate = rows / local_s
            print(f"2. consultation of {rows:,} numbers: local import {local_rate:,.0f} rows/s (the faster of "
                  f"{both[0]:.1f} s before the landings and {both[1]:.1f} s after); "
                  f"central import {rows / central_s:,.0f} rows/s ({central_s:.1f} s)")
            for label, done in (("alone (one box landing, the others stopped)", alone),
                                ("at once (4 boxes landing together on this machine)", at_once)):
                print(f"   {label}:")
                for name, (sec, ld) in sorted(done.items()):
                    print(f"     {name} landed it in {sec:.1f} s: {rows / sec:,.0f} rows/s = "
                          f"{rows / sec / local_rate:.2f}x local (target >= 0.8x; {ld})", flush=True)

        if "4" in parts:
            rounds = lookup_cost(boxes, tmp, args.lookups, args.rounds)
            ratios = sorted(r / s for r, s in rounds)
            best_r, best_s = min(r for r, _ in rounds), min(s for _, s in rounds)
            med_r, med_s = pct([r for r, _ in rounds], 50), pct([s for _, s in rounds], 50)
            print(f"4. per-call check, {len(rounds)} interleaved rounds of {args.lookups:,} calls: replica "
                  f"median {med_r * 1e6:.1f} us, best {best_r * 1e6:.1f} us; single box median {med_s * 1e6:.1f} us, "
                  f"best {best_s * 1e6:.1f} us: median ratio {pct(ratios, 50):.3f}x, best/best {best_r / best_s:.3f}x, "
                  f"ratios p10-p90 {pct(ratios, 10):.3f}-{pct(ratios, 90):.3f} (target <= 1.05x; {load()})", flush=True)
    finally:
        for b in boxes:
            try:
                b.stop()
            except Exception:
                pass
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
