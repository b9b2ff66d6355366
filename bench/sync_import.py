"""Benchmark of the consultation import (issue 3).

Generates a result file of N numbers (default 10 million; ``--rows N``),
imports it with rpo_guard in a child process, and, in the same run, loads the
same rows with a plain ``sqlite3`` executemany into the same table (the
baseline: no validation, no normalization, the numbers already E.164). For
each: rows/s and the child's peak RSS (getrusage RUSAGE_CHILDREN ru_maxrss).
During the rpo_guard import another process does Store.facts() lookups
continuously and counts the failed ones and the slow ones (> 5 ms).

Targets: >= 300k rows/s, peak RSS <= 200 MB, 0 failed or slow lookups.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

SLOW_S = 0.005


def number(i: int) -> str:
    body = (i * 2654435761) % 10**8  # a permutation: every number distinct
    return f"3{2 + i % 7}{body:08d}" if i % 3 else f"06{body:08d}"


def generate(path: Path, n: int) -> None:
    with open(path, "w") as fh:
        fh.write("number,status\n")
        buf = []
        for i in range(n):
            buf.append(f"{number(i)},{'registered' if i % 5 == 0 else 'not_registered'}\n")
            if len(buf) == 100_000:
                fh.write("".join(buf))
                buf.clear()
        fh.write("".join(buf))


def child(argv: list[str]) -> tuple[float, int]:
    """Run argv, return (seconds, peak RSS in KiB of that child: wait4's rusage, RUSAGE_CHILDREN-style)."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv[:3]} failed: {proc.returncode}")
    return time.perf_counter() - t, usage.ru_maxrss


BASELINE = r"""
import sqlite3, sys
db, src = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("CREATE TABLE IF NOT EXISTS consultations (number TEXT NOT NULL, batch_id INTEGER NOT NULL,"
             " registered INTEGER NOT NULL, registration_date TEXT, PRIMARY KEY (number, batch_id)) WITHOUT ROWID")
def rows():
    with open(src) as fh:
        next(fh)
        for line in fh:
            n, s = line.rstrip("\n").split(",")
            yield "+39" + n, 1, s == "registered", None
conn.execute("BEGIN")
conn.executemany("INSERT INTO consultations VALUES (?, ?, ?, ?)", rows())
conn.execute("COMMIT")
conn.close()
"""

IMPORT = r"""
import sys, datetime
from rpo_guard import config
from rpo_guard.sync import import_consultation
cfg = config.load(sys.argv[1])
r = import_consultation(cfg, sys.argv[2], datetime.date.fromisoformat(sys.argv[3]), who="bench")
print(r.message, flush=True)
"""


def lookups(db: str, numbers: list[str], stop, out) -> None:
    from rpo_guard.register.store import Store
    today = datetime.now(ZoneInfo("Europe/Rome")).date()
    store = Store(Path(db))
    done = failed = slow = 0
    worst = 0.0
    i = 0
    while not stop.is_set():
        n = numbers[i % len(numbers)]
        i += 1
        t = time.perf_counter()
        try:
            store.facts(n, "", today)
        except Exception:
            failed += 1
        dt = time.perf_counter() - t
        worst = max(worst, dt)
        slow += dt > SLOW_S
        done += 1
    out.put((done, failed, slow, worst))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed after)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="rpo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = work / "result.csv"
        t = time.perf_counter()
        generate(src, args.rows)
        print(f"generated {args.rows:,} rows ({src.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")

        # baseline: plain executemany of the same rows into the same table
        base_db = work / "baseline.db"
        b_s, b_rss = child([sys.executable, "-c", BASELINE, str(base_db), str(src)])

        # rpo_guard: a register holding an earlier consultation, looked up during the import
        data = work / "data"
        conf = work / "rpo-guard.conf"
        conf.write_text(f"[paths]\ndata_dir = {data}\nlog_file = {work / 'failures.log'}\n")
        today = datetime.now(ZoneInfo("Europe/Rome")).date()
        seed = work / "seed.csv"
        seed.write_text("number,status\n" + "".join(f"{number(i)},not_registered\n" for i in range(0, 3000, 3)))
        subprocess.run([sys.executable, "-c", IMPORT, str(conf), str(seed), (today - timedelta(days=2)).isoformat()],
                       check=True, stdout=subprocess.DEVNULL)
        probe = ["+39" + number(i) for i in range(0, 3000, 3)]
        stop, out = mp.Event(), mp.Queue()
        looker = mp.Process(target=lookups, args=(str(data / "rpo.db"), probe, stop, out))
        looker.start()
        time.sleep(0.5)
        r_s, r_rss = child([sys.executable, "-c", IMPORT, str(conf), str(src), (today - timedelta(days=1)).isoformat()])
        time.sleep(0.5)
        stop.set()
        done, failed, slow, worst = out.get(timeout=60)
        looker.join()

        n = args.rows
        print(f"\nrows: {n:,}   (2 shared cores; figures vary with the machine's load)")
        print(f"{'':24}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>14}")
        print(f"{'sqlite3 executemany':24}{b_s:10.1f}{n / b_s:12,.0f}{b_rss / 1024:14.0f}")
        print(f"{'rpo_guard import':24}{r_s:10.1f}{n / r_s:12,.0f}{r_rss / 1024:14.0f}")
        print(f"ratio rpo_guard/baseline: speed {b_s / r_s:.2f}x, peak RSS {r_rss / max(b_rss, 1):.2f}x")
        print(f"targets: >= 300,000 rows/s: {'met' if n / r_s >= 300_000 else 'NOT met'}; "
              f"RSS <= 200 MB: {'met' if r_rss / 1024 <= 200 else 'NOT met'}")
        print(f"lookups during the import: {done:,} done, {failed} failed, {slow} slower than 5 ms "
              f"(worst {worst * 1000:.1f} ms) (target 0 and 0)")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
