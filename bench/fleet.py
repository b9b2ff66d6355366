"""Benchmark of fleet mode (issue 17): 8 boxes on this machine, one throwaway central PostgreSQL.

Each box is a data folder with its config and its agent (`rpo-guard fleet agent`, a real
process). Prints:

1. opt-out propagation: an opt-out taken on box A during a call (the dialplan path:
   applied on A, queued in its outbox, forwarded by A's agent), then the time until the
   first refused call on every other box: p50 / p99 over every (opt-out, box) pair
   (target p99 <= 1 s);
2. a consultation of --numbers numbers (default 10,000,000) entered once at the centre
   and landed on 4 boxes: rows/s per box, against a local (single-box) import of the
   same file in the same run (target >= 0.8x);
3. audit shipping: --calls-per-second (default 5,000) attempts a second written to the
   boxes' audit.db for --seconds, lag from the write to the row at the centre: p50/p99;
4. the per-call lookup cost (Store.lookup + decide) on a replica against a single box
   with the same data (target <= 1.05x).

Usage: python bench/fleet.py [--numbers 10000000] [--boxes 8] [--optouts 40]
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


def consultation(tmp, boxes, n, cluster):
    from rpo_guard.sync import import_consultation
    path = consult_file(tmp, n)
    day = datetime.now(ROME).date() - timedelta(days=1)
    single = Box(tmp / "single", "single", "")
    t = time.perf_counter()
    import_consultation(single.cfg, path, day)
    local_s = time.perf_counter() - t
    landing = boxes[:4]
    for b in boxes[4:]:
        b.stop()  # four boxes land it; the others are offline meanwhile
    heads = {b.name: b.replica()["last_seq"] for b in landing}
    t = time.perf_counter()
    res = import_consultation(landing[0].cfg, path, day)
    central_s = time.perf_counter() - t
    committed = time.perf_counter()
    done = {}
    while len(done) < len(landing):
        for b in landing:
            if b.name not in done:
                st = b.replica()
                if st["last_seq"] > heads[b.name] and st["pending_batches"] == 0:
                    done[b.name] = time.perf_counter() - committed
        time.sleep(0.05)
    for b in boxes[4:]:
        b.start()
    shutil.rmtree(single.root, ignore_errors=True)
    return res.rows, local_s, central_s, done


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
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        now = time.perf_counter()
        for box, top in pg.execute("SELECT box, max(id) FROM box_attempts GROUP BY box"):
            seen[box].append((top, now))
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join()
    deadline = time.perf_counter() + 60
    totals = {b.name: written[b.name][-1][0] if written[b.name] else 0 for b in boxes}
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        rows = dict(pg.execute("SELECT box, max(id) FROM box_attempts GROUP BY box").fetchall())
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
                lags.extend([obs[j][1] - at] * count)
            rows_written += count
    return rows_written, lags


def lookup_cost(boxes, tmp, calls: int):
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

    def run(cfg, path):
        store = Store(path, 5000)
        for n in numbers[:200]:
            check_call(cfg, store, n)
        t = time.perf_counter()
        for k in range(calls):
            check_call(cfg, store, numbers[k % len(numbers)])
        dt = time.perf_counter() - t
        store.close()
        return dt / calls

    rounds = []
    for _ in range(5):
        r = run(replica.cfg, replica.cfg.register_db)
        s = run(scfg, str(single / "rpo.db"))
        rounds.append((r, s))
    return rounds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numbers", type=int, default=10_000_000)
    ap.add_argument("--boxes", type=int, default=8)
    ap.add_argument("--optouts", type=int, default=40)
    ap.add_argument("--calls-per-second", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--lookups", type=int, default=20000)
    args = ap.parse_args()
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
              f"load {os.getloadavg()[0]:.1f}")

        samples = optout_propagation(boxes, args.optouts)
        print(f"1. opt-out on box0 -> first refused call on each of {len(boxes) - 1} other boxes: "
              f"{len(samples)} samples, p50 {pct(samples, 50) * 1000:.0f} ms, p99 {pct(samples, 99) * 1000:.0f} ms, "
              f"max {max(samples) * 1000:.0f} ms (target p99 <= 1000 ms)")

        rows, local_s, central_s, done = consultation(tmp, boxes, args.numbers, cluster)
        local_rate = rows / local_s
        print(f"2. consultation of {rows:,} numbers: local import {local_rate:,.0f} rows/s ({local_s:.1f} s); "
              f"central import {rows / central_s:,.0f} rows/s ({central_s:.1f} s)")
        for name, s in sorted(done.items()):
            print(f"   {name} landed it in {s:.1f} s: {rows / s:,.0f} rows/s = {rows / s / local_rate:.2f}x local "
                  "(target >= 0.8x)")

        written, lags = audit_shipping(boxes, args.calls_per_second, args.seconds, central)
        print(f"3. audit shipping: {written:,} rows in {args.seconds:.0f} s ({written / args.seconds:,.0f}/s over "
              f"{len(boxes)} boxes): lag p50 {pct(lags, 50) * 1000:.0f} ms, p99 {pct(lags, 99) * 1000:.0f} ms")

        rounds = lookup_cost(boxes, tmp, args.lookups)
        ratios = [r / s for r, s in rounds]
        best_r, best_s = min(r for r, _ in rounds), min(s for _, s in rounds)
        print(f"4. per-call check on a replica {best_r * 1e6:.1f} us vs single box {best_s * 1e6:.1f} us (best of 5): "
              f"{best_r / best_s:.3f}x; per round {', '.join(f'{x:.3f}' for x in ratios)} (target <= 1.05x)")
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
