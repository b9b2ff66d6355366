"""Per-call cost of rpo-guard-agi against a trivial Python AGI, measured in the same run.

The scripts run under one interpreter, from a regular (non-editable) install
of the project in a virtualenv made for the benchmark (an editable install
adds an import hook to every Python start, which would flatter the ratio),
and are driven by the same Asterisk peer (rpo_guard.harness), interleaved
call by call so that machine noise hits them alike. The register holds
--numbers consulted numbers (default 1,000,000).

Baselines:
* trivial pyst2 AGI: reads the environment block with pyst2's AGI class and
  sets the same three channel variables; no lookup, no audit row. This is
  the baseline of the target: the smallest AGI written with the library the
  project uses.
* bare Python AGI: the same with sys.stdin/sys.stdout only (Python's own
  start-up cost, shown for scale).

    python bench/agi_overhead.py [--calls 200] [--numbers 1000000]

Target (issue 2): rpo-guard-agi costs at most 1.5x the trivial AGI.
"""
from __future__ import annotations

import argparse
import os
import random
import sqlite3
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

TRIVIAL_PYST2 = """#!{python}
import os
from asterisk.agi import AGI
agi = AGI(stderr=open(os.devnull, "w"))
for name, value in (("RPO_RESULT", "ALLOW"), ("RPO_REASON", "not_registered"), ("RPO_AUDIT_ID", "1")):
    agi.set_variable(name, value)
"""

TRIVIAL = """#!{python}
import sys
while sys.stdin.readline() not in ("\\n", ""):
    pass
for name, value in (("RPO_RESULT", "ALLOW"), ("RPO_REASON", "not_registered"), ("RPO_AUDIT_ID", "1")):
    sys.stdout.write('SET VARIABLE "%s" "%s"\\n' % (name, value))
    sys.stdout.flush()
    sys.stdin.readline()
"""


def build_register(cfg, n: int) -> list[str]:
    from rpo_guard.audit.log import AuditLog
    from rpo_guard.register.schema import open_db

    db = open_db(cfg.register_db)
    today = datetime.now(ZoneInfo(cfg.timezone)).date()
    conn = db.conn
    with conn:
        cur = conn.execute("INSERT INTO batches (kind, shape, rows, consulted_on, brand, valid_until, imported_at)"
                           " VALUES ('consultation', 'status', ?, ?, '', ?, ?)",
                           (n, (today - timedelta(days=1)).isoformat(), (today + timedelta(days=13)).isoformat(),
                            datetime.now().isoformat()))
        batch = cur.lastrowid
        conn.executemany("INSERT INTO consultations (number, batch_id, registered) VALUES (?, ?, ?)",
                         ((f"+3934{i:08d}", batch, i % 3 == 0) for i in range(n)))
    db.close()
    AuditLog(cfg.audit_db).close()
    return [f"34{i:08d}" for i in random.Random(7).sample(range(n), 64)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--numbers", type=int, default=1_000_000)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rpo-bench-agi-"))
    conf = work / "rpo-guard.conf"
    # Shipped rules, but calling hours off so that the figures do not depend on
    # the hour; the channel presents a caller ID declared for the brand (the
    # recommended set-up: phonenumbers then stays off the call path).
    conf.write_text(f"[paths]\ndata_dir = {work / 'data'}\nlog_file = {work / 'failures.log'}\n"
                    "[conduct]\ncalling_hours = off\n")
    cfg = config_mod.load(str(conf))
    t = time.perf_counter()
    numbers = build_register(cfg, args.numbers)
    from rpo_guard.register.conduct import caller_id_add
    caller_id_add(cfg, "0612340000", "Energia Uno", who="bench")
    print(f"register: {args.numbers:,} numbers built in {time.perf_counter() - t:.1f} s")

    venv = work / "venv"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(ROOT)], check=True)
    print(f"benchmark virtualenv with a regular install: {time.perf_counter() - t:.0f} s")
    python = venv / "bin" / "python"
    scripts = {}
    for name, text in (("trivial-pyst2.agi", TRIVIAL_PYST2), ("trivial.agi", TRIVIAL)):
        scripts[name] = work / name
        scripts[name].write_text(text.format(python=python))
        scripts[name].chmod(0o755)
    trivial, bare = str(scripts["trivial-pyst2.agi"]), str(scripts["trivial.agi"])
    guard = str(venv / "bin" / "rpo-guard-agi")
    env = {config_mod.ENV_VAR: str(conf)}

    def one(script, number):
        t0 = time.perf_counter()
        s = run_process_agi(script, [number, "Energia Uno"], Channel(extension=number, callerid="0612340000"),
                            env=env)
        dt = time.perf_counter() - t0
        assert s.agistatus == "SUCCESS" and s.result in ("ALLOW", "BLOCK"), s.transcript[-3:]
        assert script != guard or s.reason in ("not_registered", "rpo_registered"), s.reason
        return dt

    order = [bare, trivial, guard]
    for _ in range(5):  # warm the page cache and the interpreter's .pyc files
        for script in order:
            one(script, numbers[0])
    times = {script: [] for script in order}
    for i in range(args.calls):
        n = numbers[i % len(numbers)]
        for script in order[i % 3:] + order[:i % 3]:
            times[script].append(one(script, n))

    med = {s: statistics.median(v) for s, v in times.items()}
    p90 = {s: statistics.quantiles(v, n=10)[-1] for s, v in times.items()}
    print(f"calls per script: {args.calls} (interleaved), cores: {os.cpu_count()}")
    for label, s in (("bare Python AGI", bare), ("trivial pyst2 AGI", trivial), ("rpo-guard-agi", guard)):
        print(f"{label:<18}: median {med[s] * 1000:6.1f} ms  p90 {p90[s] * 1000:6.1f} ms")
    print(f"ratio rpo-guard-agi / trivial pyst2 AGI: {med[guard] / med[trivial]:.2f}x (target <= 1.5x)")
    print(f"ratio rpo-guard-agi / bare Python AGI:   {med[guard] / med[bare]:.2f}x (for scale)")
    rows = sqlite3.connect(cfg.audit_db).execute("SELECT count(*), avg(latency_ms) FROM attempts").fetchone()
    print(f"audit rows written: {rows[0]}, mean in-process check latency {rows[1]:.1f} ms")


if __name__ == "__main__":
    main()
