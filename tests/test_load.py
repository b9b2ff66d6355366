"""Load: 10,000 calls through the process AGI (32 at once) and through the FastAGI
server (64 at once), with imports landing throughout and the server restarted
once mid-run.

Checked: every answered call has exactly one audit row (by uniqueid and
RPO_AUDIT_ID), every decision equals the pure decision function's on the same
data, calls made while the server is down end in AGISTATUS=FAILURE (which the
dialplan blocks), and the audit chain still verifies.

Marked ``load``: `./dev test` skips it; CI runs it (`./dev test -m load`).
RPO_GUARD_LOAD_CALLS sets the number of calls per front end (default 10,000).
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import pytest

from conftest import agi_path, days, today_rome
from rpo_guard.rules.decision import CallFacts, ConsentEvent, Consultation, DncEntry, decide
from rpo_guard.harness import Channel, run_process_agi
from rpo_guard.rules.numbers import InvalidNumber, normalize

pytestmark = pytest.mark.load
CALLS = int(os.environ.get("RPO_GUARD_LOAD_CALLS", "10000"))
BRANDS = ("Energia Uno", "Telco Due")


class Dataset:
    """Numbers with known facts, loaded through the real importers; the same facts
    kept in memory so the pure decision function can say what each call must get."""

    def __init__(self, env, n: int = 3000, seed: int = 7):
        rnd = random.Random(seed)
        self.env = env
        self.numbers = [f"34{i:08d}" for i in rnd.sample(range(10**8), n)]
        self.status = {num: rnd.random() < 0.4 for num in self.numbers}
        reg_day = 60
        rows = [(num, "iscritto" if self.status[num] else "non iscritto",
                 days(reg_day) if self.status[num] else "") for num in self.numbers]
        self.batch = env.consult(rows, days_ago=1, name="load-base.csv").batch_id
        self.consulted_on = today_rome() - timedelta(days=1)
        self.consents = {}
        consent_rows = []
        for i, num in enumerate(self.numbers[:600]):
            kind = ("consent", "revocation", "contract", "optout")[i % 4]
            brand = BRANDS[i % 2]
            consent_rows.append((num, brand, kind, days(10 + i % 20), ""))
        env.consents(consent_rows, name="load-consents.csv")
        from rpo_guard.register.lists import dnc_add
        self.dnc = {}
        for num in self.numbers[600:700]:
            dnc_add(env.cfg, num, BRANDS[0], "load test", who="load")
            self.dnc[num] = BRANDS[0]
        # read back the ids the importer gave, to build the same facts in memory
        import sqlite3
        conn = sqlite3.connect(env.cfg.register_db)
        for cid, num, brand, kind, given_on in conn.execute(
                "SELECT id, number, brand, kind, given_on FROM consents"):
            self.consents.setdefault(num, []).append(
                ConsentEvent(id=cid, kind=kind, given_at=date.fromisoformat(given_on), brand=brand))
        self.dnc_ids = {num: i for i, num in conn.execute("SELECT id, number FROM dnc")}
        conn.close()

    def expected(self, dialed: str, brand: str):
        try:
            e164 = normalize(dialed)
        except InvalidNumber:
            return decide(CallFacts(today=today_rome(), e164=None, brand=brand), self.env.cfg.policy)
        national = e164[3:]
        consultations = ()
        if national in self.status:
            consultations = (Consultation(self.batch, self.consulted_on, self.status[national], "",
                                          today_rome() - timedelta(days=60) if self.status[national] else None),)
        consents = tuple(e for e in self.consents.get(e164, ()) if e.brand in (brand, ""))
        dnc = (DncEntry(self.dnc_ids[e164], self.dnc[national]),) if national in self.dnc else ()
        dnc = tuple(d for d in dnc if d.brand in ("", brand))
        return decide(CallFacts(today=today_rome(), e164=e164, brand=brand, consultations=consultations,
                                consents=consents, dnc=dnc), self.env.cfg.policy)

    def calls(self, n: int, seed: int):
        rnd = random.Random(seed)
        out = []
        for i in range(n):
            r = rnd.random()
            if r < 0.9:
                dialed = rnd.choice(self.numbers)
                dialed = rnd.choice([dialed, "+39" + dialed, "0039 " + dialed, dialed[:3] + " " + dialed[3:]])
            elif r < 0.95:
                dialed = f"347{rnd.randrange(10**7):07d}"  # not consulted
            else:
                dialed = rnd.choice(["12", "abc", "", "+39", "06-"])
            out.append((f"1795400000.{seed}{i}", dialed, rnd.choice(BRANDS)))
        return out


class ImportsInBackground:
    """Consultation imports of other numbers, one after another, until stopped."""

    def __init__(self, env):
        self.env, self.stop, self.count, self.errors = env, threading.Event(), 0, []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        from rpo_guard.sync import import_consultation
        k = 0
        while not self.stop.is_set():
            k += 1
            path = Path(self.env.root) / f"bg-{k}.csv"
            with open(path, "w") as fh:
                fh.write("number,status\n")
                for j in range(50_000):
                    fh.write(f"33{k:02d}{j:06d},{'si' if j % 3 else 'no'}\n")
            try:
                import_consultation(self.env.cfg, path, today_rome(), who="load")
                self.count += 1
            except Exception as exc:  # recorded, asserted by the test
                self.errors.append(repr(exc))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(120)


def check_results(env, data, calls, sessions, via):
    rows = {r["uniqueid"]: r for r in env.audit_rows() if r["via"] == via}
    answered = 0
    for (uid, dialed, brand), s in zip(calls, sessions):
        if s.agistatus == "FAILURE" or (via == "fastagi" and s.agistatus == "SUCCESS" and not s.result):
            # refused (server down) or closed unanswered while the server stopped:
            # nothing was decided, and the dialplan blocks the call
            assert not s.dialplan_allows and s.result == ""
            continue
        assert s.agistatus == "SUCCESS", (dialed, s.agistatus, s.transcript[-3:])
        answered += 1
        want = data.expected(dialed, brand)
        assert (s.result, s.reason) == (want.decision, want.reason), (dialed, brand)
        row = rows.pop(uid)  # exactly one row per answered call
        assert str(row["id"]) == s.channel.variables["RPO_AUDIT_ID"]
        assert (row["decision"], row["reason"]) == (want.decision, want.reason)
    assert not rows, f"{len(rows)} audit rows without a call"
    return answered


def verify_chain(env):
    from click.testing import CliRunner
    from rpo_guard.cli.main import cli
    r = CliRunner().invoke(cli, ["--config", str(env.conf), "audit", "verify"])
    assert r.exit_code == 0, r.output


@pytest.fixture
def data(env):
    env.write_config("[store]\naudit_busy_timeout_ms = 10000\n")
    env.init()
    return Dataset(env)


def test_process_agi_under_load(data):
    env = data.env
    calls = data.calls(CALLS, seed=1)

    def one(call):
        uid, dialed, brand = call
        return run_process_agi(agi_path(), [dialed, brand], Channel(uniqueid=uid), env=env.agi_env, timeout=120)

    with ImportsInBackground(env) as bg, ThreadPoolExecutor(32) as pool:
        sessions = list(pool.map(one, calls))
    assert not bg.errors and bg.count >= 1
    assert check_results(env, data, calls, sessions, "agi") == len(calls)
    verify_chain(env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(env, port):
    exe = str(Path(sys.executable).parent / "rpo-guard")
    proc = subprocess.Popen([exe, "--config", str(env.conf), "serve", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
    raise AssertionError("the FastAGI server did not start")


def test_fastagi_under_load_with_a_restart(data):
    from rpo_guard.harness import run_fastagi

    env = data.env
    port = _free_port()
    calls = data.calls(CALLS, seed=2)
    server = {"proc": _start_server(env, port)}
    done = {"n": 0}
    lock = threading.Lock()
    restarted = threading.Event()

    after_restart = set()

    def one(call):
        uid, dialed, brand = call
        if restarted.is_set():
            after_restart.add(uid)
        s = run_fastagi("127.0.0.1", port, "rpo_guard", [dialed, brand], Channel(uniqueid=uid), timeout=60)
        if not s.result:
            time.sleep(0.2)  # a refused call takes its dialer slot a moment, as real calls do
        with lock:
            done["n"] += 1
        return s

    def restart():
        while done["n"] < len(calls) * 2 // 5:
            time.sleep(0.01)
        proc = server["proc"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        server["proc"] = _start_server(env, port)
        restarted.set()

    r = threading.Thread(target=restart)
    r.start()
    try:
        with ImportsInBackground(env) as bg, ThreadPoolExecutor(64) as pool:
            sessions = list(pool.map(one, calls))
        r.join(60)
    finally:
        server["proc"].send_signal(signal.SIGTERM)
        server["proc"].wait(60)
    assert restarted.is_set()
    assert not bg.errors and bg.count >= 1
    answered = check_results(env, data, calls, sessions, "fastagi")
    refused = sum(not s.result for s in sessions)
    assert answered + refused == len(calls)
    assert answered >= len(calls) * 2 // 5 and after_restart
    for (uid, _d, _b), s in zip(calls, sessions):
        if uid in after_restart:  # the restarted server answers every later call
            assert s.agistatus == "SUCCESS" and s.result in ("ALLOW", "BLOCK"), uid
    verify_chain(env)
