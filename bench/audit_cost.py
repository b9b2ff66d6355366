"""Cost of the hash-chained audit log: share of an AGI call, and export speed on 1M rows.

Part 1, the audit write as a share of the whole AGI call. The same run measures:
* the whole call: --calls real rpo-guard-agi calls driven by the Asterisk
  peer (rpo_guard.harness), one after the other, from a regular
  (non-editable) install in a virtualenv made for the benchmark (an editable
  install slows every Python start and would flatter the share);
* the audit step exactly as rpo_guard.agi runs it, with the same interpreter:
  the import of rpo_guard.audit.log in a fresh process (measured against an
  interpreter that already imported everything else the AGI needs), then
  AuditLog(...) + append(row) + close() on the same audit.db, in a loop.
share = (import + write) / whole call. Target (issue 5): <= 10%.

Part 2, export: --rows attempts (default 1,000,000) written through
AuditLog.append_many, then `audit export` as CSV and JSON lines to files,
in rows per second and against a baseline measured in the same run: reading
the same rows from SQLite with no formatting at all. Peak memory of the CLI
exporting 10% and 100% of the rows shows it streams. `audit verify` speed too.

    python bench/audit_cost.py [--calls 200] [--rows 1000000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rpo_guard import config as config_mod  # noqa: E402
from rpo_guard.harness import Channel, run_process_agi  # noqa: E402

IMPORT_PROBE = """
import time, sys
import signal, io, os, re
from rpo_guard import config
from rpo_guard.rules import decision
from rpo_guard import guard
from rpo_guard.register import store
from rpo_guard import failure_log  # what the AGI has loaded before the audit step
from asterisk.agi import AGI
t = time.perf_counter()
from rpo_guard.audit.log import AuditLog
print(time.perf_counter() - t)
"""

WRITE_PROBE = """
import json, statistics, sys, time
from rpo_guard.audit.log import AuditLog
path, n, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3]
row = json.loads(sys.argv[4])
times = []
for i in range(n):
    row["uniqueid"] = f"bench-{sync}-{i}"
    t = time.perf_counter()
    log = AuditLog(path, file_mode=0o640, synchronous=sync)
    log.append(row)
    log.close()
    times.append(time.perf_counter() - t)
print(statistics.median(times))
"""

MEMORY_PROBE = """
import resource, sys
from rpo_guard.cli.main import cli
sys.argv = ["rpo-guard"] + sys.argv[1:]
try:
    cli(prog_name="rpo-guard", standalone_mode=False)
finally:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def sample_row(i: int, at: datetime) -> dict:
    return {"at": at.isoformat(timespec="milliseconds"), "uniqueid": f"{1795000000 + i}.{i}",
            "channel": f"PJSIP/trunk-{i:08x}", "callerid": "0612340000", "accountcode": "cc1",
            "brand": ("Energia Uno", "Telco Due")[i % 2], "dialed": f"34{i % 10**8:08d}",
            "e164": f"+3934{i % 10**8:08d}", "decision": "ALLOW" if i % 3 else "BLOCK",
            "reason": "not_registered" if i % 3 else "rpo_registered",
            "basis": {"kind": "consultation", "batch_id": 1, "brand": "", "consulted_on": "2026-11-01"},
            "detail": "not registered at the consultation of 2026-11-01", "latency_ms": 3.25 + i % 7, "via": "agi"}


def python_in(venv: Path, code: str, *args: str) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code, *args], check=True, capture_output=True,
                          text=True, cwd="/").stdout


def part1(args, work: Path) -> None:
    import json
    import random
    from rpo_guard.audit.log import AuditLog
    from rpo_guard.register.schema import open_db

    conf = work / "rpo-guard.conf"
    conf.write_text(f"[paths]\ndata_dir = {work / 'data'}\nlog_file = {work / 'failures.log'}\n")
    cfg = config_mod.load(str(conf))
    db = open_db(cfg.register_db)
    today = datetime.now(ZoneInfo(cfg.timezone)).date()
    with db.conn:
        cur = db.conn.execute(
            "INSERT INTO batches (kind, shape, rows, consulted_on, brand, valid_until, imported_at)"
            " VALUES ('consultation', 'status', ?, ?, '', ?, ?)",
            (100000, (today - timedelta(days=1)).isoformat(), (today + timedelta(days=13)).isoformat(),
             datetime.now().isoformat()))
        db.conn.executemany("INSERT INTO consultations (number, batch_id, registered) VALUES (?, ?, ?)",
                            ((f"+3934{i:08d}", cur.lastrowid, i % 3 == 0) for i in range(100000)))
    db.close()
    # an audit log that already holds a realistic history
    log = AuditLog(cfg.audit_db)
    start = datetime.now(ZoneInfo(cfg.timezone)) - timedelta(days=30)
    for k in range(0, 200000, 10000):
        log.append_many([sample_row(i, start + timedelta(seconds=i * 13)) for i in range(k, k + 10000)])
    log.close()

    venv = work / "venv"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(ROOT)], check=True)
    print(f"benchmark virtualenv with a regular install: {time.perf_counter() - t:.0f} s")
    agi = str(venv / "bin" / "rpo-guard-agi")
    env = {config_mod.ENV_VAR: str(conf)}
    numbers = [f"34{i:08d}" for i in random.Random(5).sample(range(100000), 64)]

    def call(i):
        t0 = time.perf_counter()
        s = run_process_agi(agi, [numbers[i % 64], "Energia Uno"], Channel(extension="s", uniqueid=f"b{i}.1"), env=env)
        dt = time.perf_counter() - t0
        assert s.agistatus == "SUCCESS" and s.channel.variables.get("RPO_AUDIT_ID"), s.transcript[-3:]
        return dt

    for i in range(5):
        call(i)
    whole, imports, writes_n, writes_f = [], [], [], []
    row = json.dumps(sample_row(7, datetime.now(ZoneInfo(cfg.timezone))))
    rounds = 10
    for r in range(rounds):  # interleave the measures so machine noise hits them alike
        whole += [call(r * 1000 + i) for i in range(args.calls // rounds)]
        imports += [float(python_in(venv, IMPORT_PROBE)) for _ in range(3)]
        writes_n.append(float(python_in(venv, WRITE_PROBE, str(cfg.audit_db), str(args.calls // rounds), "normal", row)))
        writes_f.append(float(python_in(venv, WRITE_PROBE, str(cfg.audit_db), str(args.calls // rounds), "full", row)))
    call_ms = statistics.median(whole) * 1000
    imp_ms = statistics.median(imports) * 1000
    wn_ms, wf_ms = statistics.median(writes_n) * 1000, statistics.median(writes_f) * 1000
    print(f"audit.db before the run: 200,000 attempts; AGI calls measured: {len(whole)}; cores: {os.cpu_count()}")
    print(f"whole AGI call (harness, regular install): median {call_ms:7.2f} ms")
    print(f"audit step: import rpo_guard.audit.log       {imp_ms:7.3f} ms")
    print(f"            open + append + close, normal    {wn_ms:7.3f} ms   (default [audit] synchronous)")
    print(f"            open + append + close, full      {wf_ms:7.3f} ms")
    print(f"share of the AGI call, synchronous=normal: {(imp_ms + wn_ms) / call_ms:6.1%}  (target <= 10%)")
    print(f"share of the AGI call, synchronous=full:   {(imp_ms + wf_ms) / call_ms:6.1%}")
    # the chain's own part of the write: the tail lookup and the hash, in-process
    from rpo_guard.audit.log import chain_tail, row_hash, values_of
    import sqlite3
    conn = sqlite3.connect(cfg.audit_db, isolation_level=None)
    values = values_of(json.loads(row))
    n = 2000
    t = time.perf_counter()
    for i in range(n):
        last_id, prev = chain_tail(conn)
        row_hash(prev, last_id + 1, values)
    chain_ms = (time.perf_counter() - t) / n * 1000
    conn.close()
    print(f"hash chain part of the write (tail lookup + sha256): {chain_ms:.3f} ms = "
          f"{chain_ms / wn_ms:.1%} of the write, {chain_ms / call_ms:.2%} of the AGI call")


def part2(args, work: Path) -> None:
    from rpo_guard.audit.chain import open_ro, verify
    from rpo_guard.audit.log import AuditLog
    from rpo_guard.audit.query import EXPORT_COLUMNS, Filters, export

    path = work / "big" / "audit.db"
    path.parent.mkdir(parents=True)
    n = args.rows
    tz = ZoneInfo("Europe/Rome")
    start = datetime(2026, 1, 1, 9, tzinfo=tz)
    t = time.perf_counter()
    log = AuditLog(path)
    step = 10000
    for k in range(0, n, step):
        log.append_many([sample_row(i, start + timedelta(seconds=i * 20)) for i in range(k, min(n, k + step))])
    log.close()
    dt = time.perf_counter() - t
    print(f"\n{n:,} attempts written with append_many (batches of {step}): {dt:.1f} s = {n / dt:,.0f} rows/s; "
          f"file {path.stat().st_size / 1e6:.0f} MB")

    conn = open_ro(path)
    t = time.perf_counter()
    k = 0
    cur = conn.execute(f"SELECT {', '.join(EXPORT_COLUMNS)} FROM attempts_explained ORDER BY id")
    for batch in iter(lambda: cur.fetchmany(5000), []):
        k += len(batch)
    base = time.perf_counter() - t
    assert k == n
    print(f"baseline, reading the rows from SQLite without formatting: {n / base:,.0f} rows/s")
    for fmt in ("csv", "jsonl"):
        out = work / f"export.{fmt}"
        t = time.perf_counter()
        with open(out, "w", encoding="utf-8", newline="") as fh:
            k = export(conn, Filters(), fmt, fh)
        dt = time.perf_counter() - t
        assert k == n
        print(f"export --format {fmt:<5}: {dt:5.1f} s = {n / dt:9,.0f} rows/s ({base / dt:.2f}x the baseline speed); "
              f"{out.stat().st_size / 1e6:.0f} MB")
        out.unlink()
    t = time.perf_counter()
    res = verify(conn)
    dt = time.perf_counter() - t
    assert res.ok and res.rows == n
    print(f"audit verify: {dt:5.1f} s = {n / dt:,.0f} rows/s")
    tenth = (start + timedelta(seconds=(n // 10) * 20)).isoformat()
    conn.close()

    conf = work / "big.conf"
    conf.write_text(f"[paths]\ndata_dir = {path.parent}\n")
    peaks = {}
    for label, extra in (("10%", ["--until", tenth]), ("100%", [])):
        p = subprocess.run([sys.executable, "-c", MEMORY_PROBE, "--config", str(conf), "audit", "export",
                            "--format", "csv", "--out", str(work / "mem.csv"), *extra],
                           capture_output=True, text=True, check=True)
        peaks[label] = int(p.stderr.strip().splitlines()[-1]) / 1024
    print(f"peak memory of `rpo-guard audit export`: {peaks['10%']:.0f} MB for {n // 10:,} rows, "
          f"{peaks['100%']:.0f} MB for {n:,} rows (ratio {peaks['100%'] / peaks['10%']:.2f}: streaming)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--skip-agi", action="store_true", help="only the export part")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (about 1.5 GB for 1M rows)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rpo-bench-audit-"))
    try:
        if not args.skip_agi:
            part1(args, work)
        part2(args, work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            import shutil
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
