"""A call through a real Asterisk, timed by Asterisk itself around AGI(), for each front end
against a trivial one that sets the same three variables, interleaved in one run.

    python bench/asterisk_call.py [--calls 40]      (needs an Asterisk: $ASTERISK, PATH or
                                                      /opt/asterisk22/sbin/asterisk)

The dialplan takes ``${STRFTIME(,,%s.%6q)}`` (microseconds) just before and just after
``AGI(...)``, so the figure is what a call waits in the dialplan: process start (or connect),
environment block, the three SET VARIABLE round trips, the check and audit row for rpo_guard.

* rpo-guard-agi, from a regular (non-editable) install in a virtualenv made for the benchmark
  (an editable install adds an import hook to every Python start), against a trivial pyst2
  AGI run by that virtualenv's interpreter: reads the environment block
  with pyst2's AGI class, sets RPO_RESULT, RPO_REASON, RPO_AUDIT_ID; no lookup, no audit row.
* rpo-guard serve against a trivial asyncio FastAGI server (one process, the standard loop):
  reads the environment block, sends the same three SET VARIABLE commands.

Each round places one call of each kind, in a shuffled order; calls run one at a time. The
sandboxed Asterisk (tests/astsandbox) lives in a temp folder and listens on nothing.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from astsandbox import Sandbox, find_asterisk  # noqa: E402

NUMBER = "0612345678"

TRIVIAL_PYST2 = """#!{python}
import os
from asterisk.agi import AGI
agi = AGI(stderr=open(os.devnull, "w"))
for name, value in (("RPO_RESULT", "ALLOW"), ("RPO_REASON", "not_registered"), ("RPO_AUDIT_ID", "1")):
    agi.set_variable(name, value)
"""

TRIVIAL_FASTAGI = r"""
import asyncio, sys

async def session(reader, writer):
    try:
        if (await reader.readline()) == b"":
            return  # a port probe
        while (await reader.readline()) not in (b"\n", b""):
            pass
        for name, value in (("RPO_RESULT", "ALLOW"), ("RPO_REASON", "not_registered"), ("RPO_AUDIT_ID", "1")):
            writer.write(b'SET VARIABLE "%s" "%s"\n' % (name.encode(), value.encode()))
            await writer.drain()
            await reader.readline()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(session, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""

DIALPLAN = r"""
[bench]
exten => s,1,Set(ENV(RPO_GUARD_CONFIG)=${BENCH_CONFIG})
 same => n,Set(T0=${STRFTIME(,,%s.%6q)})
 same => n,AGI(${BENCH_AGI},${BENCH_NUMBER},Energia Uno)
 same => n,Set(T1=${STRFTIME(,,%s.%6q)})
 same => n,Hangup()
"""


def rpo_guard(bindir: Path, *args, config):
    subprocess.run([str(bindir / "rpo-guard"), "--config", str(config), *args], check=True, capture_output=True)


def wait_port(port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p90 = ms[int(0.9 * (len(ms) - 1))]
    return f"median {statistics.median(ms):7.2f} ms   p90 {p90:7.2f} ms   min {ms[0]:7.2f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=40, help="calls of each kind (default 40)")
    opts = ap.parse_args()
    binary, how = find_asterisk()
    if binary is None:
        print(f"asterisk_call: skipped: {how}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="rpo-bench-ast-", dir="/tmp"))
    procs = []
    try:
        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(ROOT)], check=True)
        bindir, python = venv / "bin", str(venv / "bin" / "python")
        data = work / "data"
        conf = work / "rpo-guard.conf"
        conf.write_text(f"[paths]\ndata_dir = {data}\nlog_file = {work / 'failures.log'}\n"
                        "[conduct]\ncalling_hours = off\ncaller_id_check = off\n")
        rpo_guard(bindir, "init", config=conf)
        csv = work / "consult.csv"
        csv.write_text(f"number,status\n{NUMBER},non iscritto\n")
        rpo_guard(bindir, "import-consultation", str(csv), "--date", (date.today() - timedelta(days=1)).isoformat(),
                  config=conf)
        trivial_agi = work / "trivial-pyst2-agi"
        trivial_agi.write_text(TRIVIAL_PYST2.format(python=python))
        trivial_agi.chmod(0o755)
        env = dict(os.environ, RPO_GUARD_CONFIG=str(conf))
        serve = subprocess.Popen([str(bindir / "rpo-guard"), "serve", "--listen",
                                  "127.0.0.1:0"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 text=True)
        procs.append(serve)
        port = None
        while port is None:
            line = serve.stderr.readline()
            if not line:
                raise RuntimeError("rpo-guard serve did not start")
            if "listening on 127.0.0.1:" in line:
                port = int(line.split("127.0.0.1:")[1].split()[0])
        trivial = subprocess.Popen([python, "-c", TRIVIAL_FASTAGI], stdout=subprocess.PIPE, text=True)
        procs.append(trivial)
        trivial_port = int(trivial.stdout.readline())
        wait_port(port)
        wait_port(trivial_port)
        kinds = {
            "rpo-guard-agi": str(bindir / "rpo-guard-agi"),
            "trivial pyst2 AGI": str(trivial_agi),
            "rpo-guard serve": f"agi://127.0.0.1:{port}/rpo_guard",
            "trivial FastAGI": f"agi://127.0.0.1:{trivial_port}/",
        }
        times: dict[str, list[float]] = {k: [] for k in kinds}
        with Sandbox(binary, work / "asterisk", verbose=0) as ast:
            ast.load_dialplan(DIALPLAN)
            for _ in range(2):  # warm-up: page cache, first connections
                for agi in kinds.values():
                    ast.wait_for(ast.originate("s", "bench", variables={
                        "BENCH_AGI": agi, "BENCH_CONFIG": str(conf), "BENCH_NUMBER": NUMBER}, record=("T0", "T1")))
            for _ in range(opts.calls):
                order = list(kinds.items())
                random.shuffle(order)
                for name, agi in order:
                    call = ast.originate("s", "bench", variables={
                        "BENCH_AGI": agi, "BENCH_CONFIG": str(conf), "BENCH_NUMBER": NUMBER},
                        record=("T0", "T1", "RPO_RESULT", "AGISTATUS"))
                    out = ast.wait_for(call)
                    if (out["AGISTATUS"], out["RPO_RESULT"]) != ("SUCCESS", "ALLOW"):
                        raise RuntimeError(f"{name}: {out}")
                    times[name].append(float(out["T1"]) - float(out["T0"]))
        print(f"{subprocess.run([binary, '-V'], capture_output=True, text=True).stdout.strip()} "
              f"({how}); {opts.calls} calls of each kind, interleaved; time in the dialplan around AGI():")
        for name, values in times.items():
            print(f"  {name:18s} {summary(values)}")
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"  ratio rpo-guard-agi / trivial pyst2 AGI (medians): {med['rpo-guard-agi'] / med['trivial pyst2 AGI']:.2f}x")
        print(f"  ratio rpo-guard serve / trivial FastAGI (medians): {med['rpo-guard serve'] / med['trivial FastAGI']:.2f}x")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
