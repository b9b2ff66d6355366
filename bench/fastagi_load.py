"""FastAGI load: `rpo-guard serve` against a trivial FastAGI echo server, same run.

    python bench/fastagi_load.py [--numbers 20000000] [--seconds 3] [--rounds 3] [--concurrency 1,16,64]
                                 [--rates 5000]

Builds (once, cached in --data-dir) a register of N consulted numbers with plain
sqlite3 inserts into the rpo.db schema, starts `rpo-guard serve` and a trivial
echo server (asyncio streams; reads and parses the environment block, the same
three SET VARIABLE commands, no lookup, no audit) as separate processes, reads
the register once before each point so it is in the page cache (a server
that has been answering for a while), and drives each with a load generator that
speaks FastAGI as Asterisk does (rpo_guard.harness: environment block with
agi_network, one response per command, trailing HANGUP). Prints checks/s and
p50/p99 latency (connect -> server closes its side) and server CPU per call,
per concurrency, and the ratios against the echo server measured in the same
run. A third server, the "floor" (rpo-guard's own session code with the lookup
and the audit write taken out), shows what the check itself adds.

Concurrency N is a closed loop: N calls always in flight, each starting when
the previous one ends, so the latency is N / throughput by Little's law. A
call center's calls arrive on their own, so --rates adds open-loop points:
calls started at a fixed rate whatever the server does, latency measured
from each call's scheduled start (a late generator counts against the server,
not in its favour).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rpo_guard.harness import Channel, CommandEngine, encode_env  # noqa: E402

BRAND = "Energia Uno"


# ---------------------------------------------------------------------------- register
def build_register(data: Path, numbers: int) -> None:
    from datetime import date, datetime, timezone

    from rpo_guard.register.schema import open_db

    import hashlib

    import rpo_guard.register.schema as schema_mod

    db_path = data / "rpo.db"
    schema_hash = hashlib.sha1(Path(schema_mod.__file__).read_bytes()).hexdigest()[:12]
    marker = data / f"built-{numbers}-{schema_hash}"  # rebuilt when the schema code changes
    if marker.exists() and db_path.exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    for p in [*data.glob("rpo.db*"), *data.glob("built-*"), *data.glob("audit.db*")]:
        p.unlink()
    t0 = time.perf_counter()
    open_db(db_path).close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    today = date.today().isoformat()
    conn.execute("BEGIN")
    conn.execute("INSERT INTO batches (id, kind, source_file, sha256, shape, rows, consulted_on, brand, "
                 "valid_until, imported_by, imported_at) VALUES (1, 'consultation', 'bench', '', 'status', ?, ?, "
                 "'', ?, 'bench', ?)", (numbers, today, today, datetime.now(timezone.utc).isoformat()))

    def rows():
        for i in range(numbers):  # mobile numbers 3xx xxxxxxx in order: index-friendly inserts
            yield (f"+393{i:09d}", 1, i % 5 == 0, None)

    conn.executemany("INSERT INTO consultations (number, batch_id, registered, registration_date) "
                     "VALUES (?, ?, ?, ?)", rows())
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    marker.touch()
    print(f"register: {numbers:,} numbers built in {time.perf_counter() - t0:.1f} s ({db_path})", flush=True)


# ---------------------------------------------------------------------------- echo server
async def _echo_session(reader, writer):
    """What any FastAGI server does per call, and nothing more: read and parse the
    environment block (a server must, to get its arguments), send the three SET
    VARIABLE commands one at a time, half-close, read to the end."""
    from rpo_guard.fastagi.session import parse_env
    try:
        async with asyncio.timeout(2):
            parse_env(await reader.readuntil(b"\n\n"))
        for name, value in (("RPO_RESULT", "ALLOW"), ("RPO_REASON", "not_registered"), ("RPO_AUDIT_ID", "1")):
            writer.write(f'SET VARIABLE "{name}" "{value}"\n'.encode())
            async with asyncio.timeout(2):
                while True:
                    line = await reader.readline()
                    if not line.endswith(b"\n"):
                        raise ConnectionError
                    if line != b"HANGUP\n":
                        break
        writer.write_eof()
        async with asyncio.timeout(2):
            while await reader.read(4096):
                pass
        writer.close()
    except Exception:
        writer.transport.abort()


async def _echo_main():
    server = await asyncio.start_server(_echo_session, "127.0.0.1", 0, backlog=1024)
    print(f"echo listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


# ---------------------------------------------------------------------------- transport floor
def _floor_main() -> None:
    """`rpo-guard serve`'s own code (session state machine, event loop, peer check,
    answer bytes) with the lookup and the audit write taken out: what the check
    and the audit row cost on top of our transport is ours minus this."""
    from datetime import datetime

    from rpo_guard import config

    from rpo_guard.fastagi import server as fastagi
    from rpo_guard.rules.decision import Verdict
    from rpo_guard.guard import Outcome

    outcome = Outcome(Verdict("ALLOW", "not_registered", {}), "+393000000001", datetime.now().astimezone())

    class Floor(fastagi.FastAGIServer):
        def _warm(self):
            pass

        def check(self, session, *args):
            session.checked(outcome)

        async def start(self):
            await super().start()
            self.audit.submit = lambda row, done: done(1, None)

    fastagi.FastAGIServer = Floor
    fastagi.run_server(config.load(None), ("127.0.0.1", 0))


# ---------------------------------------------------------------------------- load generator
class AsteriskSide(asyncio.Protocol):
    """One FastAGI call as Asterisk makes it (environment block, one answer per
    command through the harness's CommandEngine, HANGUP once the server closes)."""

    def __init__(self, port: int, number: str, i: int, done: asyncio.Future):
        self.channel = Channel(extension=number[3:], uniqueid=f"1795339{i}.{i}", callerid="0612340000")
        self.engine = CommandEngine(self.channel)
        self.env = encode_env(self.channel.env_block(f"agi://127.0.0.1:{port}/rpo_guard", [number, BRAND],
                                                     network_script="rpo_guard"))
        self.done = done
        self.buf = b""
        self.t0 = time.perf_counter()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.env)

    def data_received(self, data):
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.transport.write(self.engine.handle(line.decode()).encode())

    def eof_received(self):
        elapsed = time.perf_counter() - self.t0
        self.transport.write(b"HANGUP\n")
        self.transport.close()
        v = self.channel.variables
        if not self.done.done():
            if v.get("RPO_RESULT") in ("ALLOW", "BLOCK") and v.get("RPO_REASON") not in (None, "error"):
                self.done.set_result(elapsed)
            else:
                self.done.set_exception(RuntimeError(f"bad answer: {v}"))
        return True

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"lost: {exc}"))


async def one_call(port: int, number: str, i: int) -> float:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    t0 = time.perf_counter()
    await loop.create_connection(lambda: AsteriskSide(port, number, i, done), "127.0.0.1", port)
    await done
    return time.perf_counter() - t0


async def load(port: int, concurrency: int, seconds: float, numbers: int, seed: int | None = None):
    rng = random.Random(concurrency if seed is None else seed)
    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds
    counter = 0

    async def worker():
        nonlocal errors, counter
        while time.perf_counter() < end:
            counter += 1
            number = f"+393{rng.randrange(numbers):09d}"
            try:
                lat.append(await one_call(port, number, counter))
            except Exception:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return len(lat), lat, errors, wall


class _Ticker:
    """A Linux timerfd firing every ``interval`` seconds, read by the event loop.

    The loops' own timers count whole milliseconds: sleeping on them starts
    calls up to 1–2 ms late, in bursts, and an open loop charges that to the
    server (against the echo alone, p50 1.1 ms instead of 0.4 at 1,000
    calls/s). A timerfd wakes epoll at the nanosecond asked for.
    (os.timerfd_create is Python 3.13; ctypes reaches the same libc call.)"""

    def __init__(self, interval: float):
        import ctypes

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        ns = max(int(interval * 1e9), 1000)
        period = Timespec(ns // 1_000_000_000, ns % 1_000_000_000)
        if libc.timerfd_settime(self.fd, 0, ctypes.byref(Itimerspec(period, period)), None) < 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime")

    def read(self) -> None:
        try:
            os.read(self.fd, 8)  # the expiration count: reading it re-arms the readiness
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


async def load_at_rate(port: int, rate: float, seconds: float, numbers: int, seed: int | None = None):
    """Open loop: call i starts at t0 + i/rate whatever the server does; a
    timerfd tick (every 1/rate s, at most every 200 µs) starts the calls whose
    time has come."""
    loop = asyncio.get_running_loop()
    rng = random.Random(int(rate) if seed is None else seed)
    lat: list[float] = []
    errors = 0
    pending = set()
    total = int(rate * seconds)
    started = 0
    all_started = loop.create_future()

    async def call(i: int, scheduled: float):
        nonlocal errors
        try:
            await one_call(port, f"+393{rng.randrange(numbers):09d}", i)
            lat.append(time.perf_counter() - scheduled)
        except Exception:
            errors += 1

    def tick() -> None:
        nonlocal started
        ticker.read()
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)  # every call whose time has come
        for i in range(started, due):
            task = loop.create_task(call(i, t0 + i / rate))
            pending.add(task)
            task.add_done_callback(pending.discard)
        started = due
        if started == total and not all_started.done():
            all_started.set_result(None)

    t0 = time.perf_counter()
    ticker = _Ticker(max(1 / rate, 0.0002))
    loop.add_reader(ticker.fd, tick)
    try:
        tick()
        await all_started
    finally:
        loop.remove_reader(ticker.fd)
        ticker.close()
    while pending:
        await asyncio.gather(*pending)
    return len(lat), lat, errors, time.perf_counter() - t0


def run_generator(coro):
    """The load generator runs on uvloop when GENERATOR_LOOP is not "asyncio": on
    two shared cores every microsecond it spends is taken from the server."""
    if os.environ.get("GENERATOR_LOOP", "uvloop") == "uvloop":
        import uvloop
        return uvloop.run(coro)
    return asyncio.run(coro)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm(path: Path) -> None:
    """Read the register once, so its pages are in the OS page cache, as on a server
    that has been answering for a while (this machine's memory reclaim evicts files
    left untouched for a minute or so)."""
    with open(path, "rb") as fh:
        while fh.read(1 << 22):
            pass


def measure(proc, port: int, concurrency: int, seconds: float, numbers: int, register: Path | None = None,
            rate: float = 0, seed: int | None = None) -> dict:
    """One point: ``concurrency`` calls in a closed loop, or (``rate``) an open loop. The numbers
    are drawn by a generator seeded with ``seed`` (default: the point's concurrency or rate,
    so that every measure of a point calls the same numbers)."""
    if register is not None:
        warm(register)
    run_generator(load(port, min(concurrency, 4), 0.3, numbers, None if seed is None else -1 - seed))  # warm-up
    cpu0, gen0 = cpu_seconds(proc.pid), time.process_time()
    n, lat, errors, wall = run_generator(load_at_rate(port, rate, seconds, numbers, seed) if rate
                                         else load(port, concurrency, seconds, numbers, seed))
    cpu, gen = cpu_seconds(proc.pid) - cpu0, time.process_time() - gen0
    if len(lat) < 2:
        raise SystemExit(f"no answered calls at concurrency {concurrency} ({errors} errors): "
                         "see failures.log in the data folder")
    return {"rate": n / wall, "lat": lat, "n": n, "errors": errors,
            "cpu_us": cpu / max(n, 1) * 1e6, "gen_us": gen / max(n, 1) * 1e6}


def start(cmd: list[str], env: dict, marker: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if marker not in line:
        proc.kill()
        raise SystemExit(f"{cmd[0]} did not start: {line}{proc.stderr.read()}")
    return proc, int(line.split("127.0.0.1:")[1].split()[0])


def main() -> None:
    if "--echo-server" in sys.argv:
        asyncio.run(_echo_main())
        return
    if "--floor-server" in sys.argv:
        _floor_main()
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numbers", type=int, default=int(os.environ.get("RPO_BENCH_NUMBERS", 20_000_000)))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--rates", default="1000,5000", help="open-loop points, calls/s ('' for none)")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per point and server (medians printed)")
    ap.add_argument("--audit-rows", type=int, default=1_000_000,
                    help="rows already in the audit log when the run starts (0: an empty log)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="where the register is built and kept (default: a folder under the temp dir)")
    args = ap.parse_args([a for a in sys.argv[1:]])
    data = args.data_dir or Path(tempfile.gettempdir()) / f"rpo-guard-bench-{args.numbers}"
    build_register(data, args.numbers)
    kept = build_audit_log(data, args.audit_rows)
    for p in data.glob("audit.db*"):  # each run starts from the same audit log (its schema follows the code)
        p.unlink()
    if kept is not None:
        shutil.copyfile(kept, data / "audit.db")
        with sqlite3.connect(data / "audit.db") as conn:
            conn.execute("PRAGMA journal_mode = WAL")
        with open(data / "audit.db", "rb+") as fh:  # written out now, not during the first points
            os.fsync(fh.fileno())
    (data / "failures.log").unlink(missing_ok=True)
    conf = data / "rpo-guard.conf"
    # The calling hours stay on, over the whole day, so that the calls take the same
    # path (register, consents, DNC, caller ID, calendar, then the register's answer)
    # whatever the hour the benchmark runs at; on a Sunday or a holiday every call is
    # refused by the calendar instead (the decisions are printed at the end).
    conf.write_text(f"[paths]\ndata_dir = {data}\nlog_file = {data / 'failures.log'}\n"
                    "[conduct]\nweekday_hours = 00:00-23:59\nreduced_hours = 00:00-23:59\n"
                    + os.environ.get("RPO_BENCH_EXTRA_CONF", ""))
    env = dict(os.environ, RPO_GUARD_CONFIG=str(conf))
    rpo_guard = str(Path(sys.executable).parent / "rpo-guard")
    servers = {"ours": start([rpo_guard, "serve", "--listen", "127.0.0.1:0"], env, "listening on"),
               "echo": start([sys.executable, __file__, "--echo-server"], env, "echo listening"),
               "floor": start([sys.executable, __file__, "--floor-server"], env, "listening on")}
    print(f"FastAGI load, {args.numbers:,}-number register, audit log starting at {max(args.audit_rows, 0):,} rows, "
          f"{args.rounds} rounds of {args.seconds:g} s per point (rates and CPU: medians; p50/p99: over every "
          f"call of the rounds), {os.cpu_count()} CPUs (generator and servers share them)")
    print(f"{'conc':>4} | {'rpo-guard/s':>11} {'p50 ms':>6} {'p99 ms':>6} {'cpu us':>6} | {'echo/s':>7} "
          f"{'p50 ms':>6} {'p99 ms':>6} {'cpu us':>6} | {'floor us':>8} | {'rate':>5} {'p50':>5} {'p99':>5} "
          f"{'cpu':>5} | {'cpu/floor':>9} | {'gen us':>6}")
    points = [(int(x), 0) for x in args.concurrency.split(",") if x]
    points += [(0, float(x)) for x in args.rates.split(",") if x]
    try:
        for c, rate in points:
            runs = {name: [] for name in servers}
            for _ in range(args.rounds):  # interleaved, so a noisy moment hits every server
                for name, (proc, port) in servers.items():
                    runs[name].append(measure(proc, port, c, args.seconds, args.numbers, data / "rpo.db", rate))
            o, e, f = (median_of(runs[n]) for n in ("ours", "echo", "floor"))
            errors = {n: sum(r["errors"] for r in rs) for n, rs in runs.items()}
            label = f"{c:>4}" if not rate else f"@{rate:g}/s"
            print(f"{label:>4} | {o['rate']:>11,.0f} {o['p50']:>6.2f} {o['p99']:>6.2f} {o['cpu_us']:>6.0f} | "
                  f"{e['rate']:>7,.0f} {e['p50']:>6.2f} {e['p99']:>6.2f} {e['cpu_us']:>6.0f} | {f['cpu_us']:>8.0f} | "
                  f"{e['rate'] / o['rate']:>5.2f} {o['p50'] / e['p50']:>5.2f} {o['p99'] / e['p99']:>5.2f} "
                  f"{o['cpu_us'] / e['cpu_us']:>5.2f} | {o['cpu_us'] / f['cpu_us']:>9.2f} | {o['gen_us']:>6.0f}"
                  + (f"  errors: {errors}" if any(errors.values()) else ""), flush=True)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            proc.wait(60)
    stopped = [line for line in servers["ours"][0].stderr.read().splitlines() if "stopped;" in line]
    print("rpo-guard's decisions: " + (stopped[-1].split("stopped; ", 1)[1] if stopped else "(no stop line)"))
    print("conc N = N calls always in flight (closed loop); @R/s = calls started at R per second whatever the "
          "server does (open loop), latency from each call's scheduled start.")
    print("cpu us = server CPU (all threads) per call. echo = a trivial FastAGI server (asyncio streams, the "
          "same three SET VARIABLEs, no lookup, no audit); floor = rpo-guard's own session code and event loop "
          "with the lookup and the audit write taken out.")
    print("ratios: rate = echo/ours checks/s; p50, p99, cpu = ours/echo (per-call cost target <= 1.3); "
          "cpu/floor = what the check and the audit row add to our transport; gen us = the load generator's "
          "own CPU per call (against ours). "
          "Targets: >= 5,000 checks/s, p99 <= 2 ms, cpu <= 1.3x echo.")


def median_of(results: list[dict]) -> dict:
    """Medians of the rounds' rates and CPU; p50/p99 over every call of every round (a
    median of per-round p99s would hide a stall that hits one round in three)."""
    out = {k: statistics.median(r[k] for r in results) for k in ("rate", "cpu_us", "gen_us")}
    q = statistics.quantiles(sorted(x for r in results for x in r["lat"]), n=100, method="inclusive")
    out["p50"], out["p99"] = q[49] * 1000, q[98] * 1000
    return out


def build_audit_log(data: Path, rows: int) -> Path | None:
    """An audit log of ``rows`` attempts (random numbers of the register, chained as the
    server chains them), built once and kept; each run starts from a copy of it, as a
    server that has been recording for a while (its e164 index as large as in use)."""
    if rows <= 0:
        return None
    import hashlib

    from rpo_guard.audit import log as audit_log
    code = hashlib.sha1(Path(audit_log.__file__).read_bytes()).hexdigest()[:12]
    kept = data / f"audit-{rows}-{code}.db"  # rebuilt when the audit schema code changes
    if kept.exists():
        return kept
    for p in data.glob("audit-*.db*"):
        p.unlink()
    t0 = time.perf_counter()
    audit_log.use_json_module()
    tmp = data / "audit-building.db"
    for p in data.glob("audit-building.db*"):
        p.unlink()
    audit_log.AuditLog(str(tmp)).close()
    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    rng = random.Random(7)
    prev = audit_log.GENESIS
    conn.execute("BEGIN")
    for i in range(1, rows + 1):
        number = f"+393{rng.randrange(10 ** 9):09d}"
        values = audit_log.values_of({
            "at": "2026-11-20T10:00:00.000+01:00", "uniqueid": f"1795339{i}.{i}", "channel": "PJSIP/trunk-00000001",
            "callerid": "0612340000", "accountcode": "", "brand": BRAND, "dialed": number, "e164": number,
            "decision": "ALLOW", "reason": "not_registered",
            "basis": {"kind": "consultation", "batch_id": 1, "consulted_on": "2026-11-20"},
            "detail": "not registered at the consultation of 2026-11-20", "latency_ms": 0.5, "via": "fastagi"})
        h = audit_log.row_hash(prev, i, values)
        conn.execute(audit_log.AuditLog._INSERT, (i, *values, prev, h))
        prev = h
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = DELETE")  # one file to copy
    conn.close()
    tmp.rename(kept)
    print(f"audit log: {rows:,} rows built in {time.perf_counter() - t0:.1f} s ({kept})", flush=True)
    return kept


if __name__ == "__main__":
    main()
