"""The FastAGI server against the harness's Asterisk peer, on loopback."""
from __future__ import annotations

import csv
import re
import signal
import socket
import sqlite3
import threading
import time
from datetime import timedelta
from importlib import resources
from pathlib import Path

import pytest

from conftest import agi_path, today_rome
from fastagi_support import Server
from decision_table import TABLE, table_by_day, table_env  # noqa: F401  (the shared decision table and its data)
from rpo_guard.fastagi import checkpoint as checkpoint_mod
from rpo_guard.fastagi import writer as writer_mod
from rpo_guard.audit.log import AUDIT_SCHEMA_VERSION
from rpo_guard.harness import Channel, run_fastagi, run_process_agi

COMPARED = ("callerid", "channel", "accountcode", "brand", "dialed", "e164", "decision", "reason",
            "basis", "detail")


def load_sample(env):
    """The embedded sample data (what `rpo-guard demo` uses), dated two days ago."""
    import gc
    from rpo_guard.cli.demo import ANCHOR, _shifted
    from rpo_guard.register.lists import dnc_add
    from rpo_guard.sync import import_consents, import_consultation

    consulted = today_rome() - timedelta(days=2)
    delta = consulted - ANCHOR
    sample = resources.files("rpo_guard") / "sample_data"
    for name in ("consultation.csv", "consents.csv", "dnc.csv", "campaign.csv"):
        env.csv(name, _shifted((sample / name).read_text(encoding="utf-8"), delta))
    env.init()
    import_consultation(env.cfg, env.root / "consultation.csv", consulted, who="test")
    import_consents(env.cfg, env.root / "consents.csv", who="test")
    with open(env.root / "dnc.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            dnc_add(env.cfg, row["number"], row["brand"], row["reason"], who="test")
    with open(env.root / "campaign.csv", newline="", encoding="utf-8") as fh:
        cases = [(r["dialed"], r["brand"], r["caller_id"]) for r in csv.DictReader(fh)]
    gc.collect()  # the importers' connections
    return cases


# The shared decision table: the sample campaign plus the odd inputs a dialplan can pass.
EXTRA_CASES = [
    ("", "Energia Uno", "0612340000"),              # no number at all
    ("3331234567", "", "0612340000"),                # no brand
    ("+39 333 123 4567", "Telco Due", "unknown"),    # registered, other brand
    ("3485556667", "Telco Due", "0612340000"),       # global DNC covers every brand
    ("abc;rm -rf", "Energia Uno", "0612340000"),     # garbage
]


@pytest.fixture(params=["uvloop", "asyncio"])
def sample(env, request):
    """The sample data, with the server on each event loop the setting offers."""
    env.event_loop = request.param
    cases = load_sample(env) + EXTRA_CASES
    env.write_config("[fastagi]\nread_timeout_ms = 500\n")
    return env, cases


@pytest.fixture
def server(sample):
    env, _ = sample
    s = Server(env.conf)
    yield s
    s.stop()


def _channel(i: int, dialed: str, caller_id: str) -> Channel:
    return Channel(extension=re.sub(r"\D", "", dialed) or "s", callerid=caller_id,
                   uniqueid=f"1795339{200 + i}.{i}")


def test_decisions_equal_the_process_agi(sample, server):
    env, cases = sample
    seen = set()
    for i, (dialed, brand, caller_id) in enumerate(cases):
        p = run_process_agi(agi_path(), [dialed, brand], _channel(i, dialed, caller_id), env=env.agi_env)
        f = run_fastagi("127.0.0.1", server.port, "rpo_guard", [dialed, brand], _channel(i, dialed, caller_id))
        assert (f.agistatus, f.result, f.reason, f.dialplan_allows) == \
               (p.agistatus, p.result, p.reason, p.dialplan_allows), (dialed, brand, f.transcript)
        assert f.agistatus == "SUCCESS" and f.result in ("ALLOW", "BLOCK")
        rows = {r["id"]: r for r in env.audit_rows()}
        prow = rows[int(p.channel.variables["RPO_AUDIT_ID"])]
        frow = rows[int(f.channel.variables["RPO_AUDIT_ID"])]
        assert (prow["via"], frow["via"]) == ("agi", "fastagi")
        assert {k: frow[k] for k in COMPARED} == {k: prow[k] for k in COMPARED}
        seen.add((f.result, f.reason))
    # the table is not trivial: both answers and most reasons occur
    assert {r for r, _ in seen} == {"ALLOW", "BLOCK"}
    assert len({reason for _, reason in seen}) >= 7
    assert ("BLOCK", "error") not in seen


@pytest.fixture(scope="module")
def table_servers():
    """One server per table data folder (a new one if the module runs across midnight)."""
    servers = {}
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture
def table_server(table_env, table_servers):  # noqa: F811
    if str(table_env.conf) not in table_servers:
        table_servers[str(table_env.conf)] = Server(table_env.conf)
    return table_servers[str(table_env.conf)]


@pytest.mark.parametrize("dialed, brand, decision, reason", TABLE)
def test_shared_decision_table_same_through_fastagi(table_env, table_server, dialed, brand, decision, reason):  # noqa: F811
    p = run_process_agi(agi_path(), [dialed, brand], Channel(extension="3331234567"), env=table_env.agi_env)
    f = run_fastagi("127.0.0.1", table_server.port, "rpo_guard", [dialed, brand], Channel(extension="3331234567"))
    assert (f.agistatus, f.result, f.reason, f.dialplan_allows) == \
           (p.agistatus, p.result, p.reason, p.dialplan_allows) == ("SUCCESS", decision, reason, decision == "ALLOW")


@pytest.mark.parametrize("callerid, args, reason", [
    ("unknown", [], "caller_id_not_allowed"),                   # hidden
    ("0612340000", [], "not_registered"),
    ("0612340000", ["+14155550100"], "caller_id_not_allowed"),  # the third argument wins: foreign
    ("+14155550100", ["0612340000"], "not_registered"),
])
def test_caller_id_rule_same_through_fastagi(sample, callerid, args, reason):
    """With the caller-ID rule on, both front ends read the same caller ID and presentation."""
    env, _ = sample
    env.write_config("[fastagi]\nread_timeout_ms = 500\n", conduct="calling_hours = off\n")
    server = Server(env.conf)
    try:
        call = ["0612345678", "Energia Uno", *args]
        p = run_process_agi(agi_path(), call, Channel(callerid=callerid), env=env.agi_env)
        f = run_fastagi("127.0.0.1", server.port, "rpo_guard", call, Channel(callerid=callerid))
    finally:
        server.stop()
    assert (f.agistatus, f.result, f.reason) == (p.agistatus, p.result, p.reason)
    assert f.reason == reason


def test_session_bytes_match_asterisk(sample, server):
    s = run_fastagi("127.0.0.1", server.port, "rpo_guard?x=1", ["3331234567", "Energia Uno"], _channel(1, "3331234567", "unknown"))
    assert s.transcript[0] == "AGI Tx >> agi_network: yes"
    assert s.transcript[1] == "AGI Tx >> agi_network_script: rpo_guard?x=1"
    assert s.transcript[2].endswith(f"Tx >> agi_request: agi://127.0.0.1:{server.port}/rpo_guard?x=1")
    rx = [t.split("Rx << ", 1)[1] for t in s.transcript if "Rx << " in t]
    assert rx[:2] == ['SET VARIABLE "RPO_RESULT" "BLOCK"', 'SET VARIABLE "RPO_REASON" "rpo_registered"']
    assert re.fullmatch(r'SET VARIABLE "RPO_AUDIT_ID" "\d+"', rx[2]) and len(rx) == 3
    assert s.transcript[-2].endswith("completed, returning 0") and s.transcript[-1].endswith("Tx >> HANGUP")


@pytest.mark.parametrize("how", ["after_env", "before_first_answer", "before_last_answer"])
def test_caller_hangs_up_mid_session(sample, server, how):
    env, _ = sample
    kw = {"after_env": {"hangup_after": 0.0}, "before_first_answer": {"hangup_before_command": 1},
          "before_last_answer": {"hangup_before_command": 3}}[how]
    s = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["0612345678", "Energia Uno"],
                    _channel(7, "0612345678", "unknown"), **kw)
    assert s.agistatus == "HANGUP" and not s.dialplan_allows
    # SET VARIABLE works on a dead channel: the h extension sees the answer, and it is recorded
    assert (s.result, s.reason) == ("ALLOW", "not_registered")
    row = [r for r in env.audit_rows() if r["id"] == int(s.channel.variables["RPO_AUDIT_ID"])][0]
    assert (row["via"], row["decision"], row["uniqueid"]) == ("fastagi", "ALLOW", "1795339207.7")
    assert sum(1 for t in s.transcript if t.endswith("Tx >> HANGUP")) == 2  # inline + trailing
    # the inline HANGUP came before the answer the server was waiting for
    inline = next(i for i, t in enumerate(s.transcript) if t.endswith("Tx >> HANGUP"))
    answers = [i for i, t in enumerate(s.transcript) if t.endswith("Tx >> 200 result=1")]
    assert len(answers) == 3
    assert inline < answers[kw.get("hangup_before_command", 1) - 1]


def test_server_down_is_failure_and_blocks():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    s = run_fastagi("127.0.0.1", port, "rpo_guard", ["0612345678", "Energia Uno"])
    assert s.agistatus == "FAILURE" and s.result == "" and not s.dialplan_allows
    assert "Connection refused" in s.transcript[0]


def _bad_clients(port: int) -> list[socket.socket]:
    env_head = b"agi_network: yes\nagi_network_script: rpo_guard\nagi_request: agi://127.0.0.1/rpo_guard\n"
    socks = []
    silent = socket.create_connection(("127.0.0.1", port))
    socks.append(silent)
    garbage = socket.create_connection(("127.0.0.1", port))
    garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage\n\n")
    socks.append(garbage)
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(env_head[:40])
    half.shutdown(socket.SHUT_WR)
    socks.append(half)
    huge = socket.create_connection(("127.0.0.1", port))
    try:
        huge.sendall(b"agi_network: " + b"x" * 200_000)
    except OSError:
        pass  # the server may already have dropped it
    socks.append(huge)
    gone = socket.create_connection(("127.0.0.1", port))  # env then gone before answering
    gone.sendall(env_head + b"agi_arg_1: 0612345678\n\n")
    gone.close()
    mute = socket.create_connection(("127.0.0.1", port))  # env, then never answers a command
    mute.sendall(env_head + b"agi_arg_1: 0612345678\n\n")
    socks.append(mute)
    return socks


def test_bad_clients_cost_one_connection_each(sample, server):
    env, cases = sample
    bad = _bad_clients(server.port)
    answers = []

    def call(i):
        dialed, brand, caller_id = cases[i % len(cases)]
        s = run_fastagi("127.0.0.1", server.port, "rpo_guard", [dialed, brand], _channel(i, dialed, caller_id))
        answers.append((s.agistatus, s.result, s.reason))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 24
    assert all(a == "SUCCESS" and r in ("ALLOW", "BLOCK") and reason != "error" for a, r, reason in answers)
    # every bad client is eventually dropped by the server (read timeout, size limit, EOF)
    for sk in bad:
        sk.settimeout(20)
        try:
            while sk.recv(65536):
                pass  # the mute client gets its SET VARIABLE, then nothing more
        except ConnectionResetError:
            pass
        sk.close()
    # and the server still answers
    s = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["0612345678", "Energia Uno"])
    assert (s.agistatus, s.result) == ("SUCCESS", "ALLOW")
    assert server.stop() == 0
    assert "protocol_errors=6 " in server.stderr and " errors=0 " in server.stderr


def test_peer_not_allowed_is_refused(sample):
    env, _ = sample
    env.write_config("[fastagi]\nallowed_peers = 10.1.2.3, 192.168.0.0/16\n")
    s = Server(env.conf)
    try:
        session = run_fastagi("127.0.0.1", s.port, "rpo_guard", ["0612345678", "Energia Uno"])
        assert session.result == "" and not session.dialplan_allows
        assert "not in allowed_peers" in env.failures.read_text()
        assert not [r for r in env.audit_rows() if r["via"] == "fastagi"]
    finally:
        s.stop()


def _swap_register(env, generation: int, symlink: bool) -> None:
    """Build a complete new register beside the live one and put it in place atomically.

    Each generation puts 0612345678 on the DNC list for brand g<generation>.
    """
    live = Path(env.cfg.register_db)
    target = env.data / (f"rpo-gen{generation}.db" if symlink else "rpo.db.new")
    src = sqlite3.connect(f"file:{live}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    src.backup(dst)
    src.close()
    dst.execute("INSERT INTO dnc (number, brand, reason, added_by, added_at) VALUES (?, ?, 'swap', 'test', '2026-01-01')",
                ("+390612345678", f"g{generation}"))
    dst.commit()
    if not symlink:
        dst.execute("PRAGMA journal_mode = DELETE")  # the new file carries no WAL of its own
    dst.close()
    if not symlink:
        # the live file's WAL is emptied first: a file renamed over a WAL database would
        # otherwise be read through the old file's -wal (which is why a symlink swap is better)
        c = sqlite3.connect(live, timeout=5)
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()
    if symlink:
        tmp = env.data / "rpo.db.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target.name)
        tmp.replace(live)
    else:
        target.replace(live)


@pytest.mark.parametrize("symlink", [True, False], ids=["symlink-swap", "file-rename"])
def test_register_replaced_under_load(sample, symlink):
    env, cases = sample
    if symlink:  # rpo.db becomes a symlink to a generation file, as a sync tool may keep it
        live = Path(env.cfg.register_db)
        first = env.data / "rpo-gen0.db"
        src = sqlite3.connect(live)
        dst = sqlite3.connect(first)
        src.backup(dst)
        src.close()
        dst.close()
        for suffix in ("", "-wal", "-shm"):
            (env.data / f"rpo.db{suffix}").unlink(missing_ok=True)
        live.symlink_to(first.name)
    server = Server(env.conf)
    stop = threading.Event()
    results = []

    def caller(k):
        i = 0
        while not stop.is_set():
            dialed, brand, caller_id = cases[(k * 7 + i) % len(cases)]
            s = run_fastagi("127.0.0.1", server.port, "rpo_guard", [dialed, brand], _channel(i, dialed, caller_id))
            results.append((s.agistatus, s.reason))
            i += 1

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for generation in range(1, 6):
            time.sleep(0.15)
            _swap_register(env, generation, symlink)
        time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        last = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["0612345678", "g5"])
        assert (last.result, last.reason) == ("BLOCK", "internal_dnc")  # the newest file answers
        old = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["0612345678", "g4"])
        assert (old.result, old.reason) == ("BLOCK", "internal_dnc")    # it holds every generation
    finally:
        assert server.stop() == 0
    assert len(results) >= 20
    assert [r for r in results if r != ("SUCCESS", r[1]) or r[1] == "error"] == []
    assert " errors=0 " in server.stderr and not env.failures.exists()


def test_sigterm_with_calls_in_flight_loses_no_row(sample):
    env, cases = sample
    server = Server(env.conf)
    results = []

    def caller(i):
        dialed, brand, caller_id = cases[i % len(cases)]
        # the caller's peer answers slowly, so the sessions are in flight when SIGTERM comes
        s = run_fastagi("127.0.0.1", server.port, "rpo_guard", [dialed, brand], _channel(i, dialed, caller_id),
                        answer_delay=0.3)
        results.append(s)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.25)
    server.send(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert server.stop() == 0
    answered = [s for s in results if s.result]
    assert len(answered) == 16  # every call in flight was finished, none cut
    ids = {int(s.channel.variables["RPO_AUDIT_ID"]) for s in answered}
    rows = {r["id"]: r for r in env.audit_rows() if r["via"] == "fastagi"}
    assert ids <= set(rows) and len(rows) == 16
    # the rows of calls in flight together were group-committed, not one commit each
    commits = int(re.search(r"audit_commits=(\d+)", server.stderr).group(1))
    assert 1 <= commits < 16
    for s in answered:
        row = rows[int(s.channel.variables["RPO_AUDIT_ID"])]
        assert (row["decision"], row["reason"], row["uniqueid"]) == (s.result, s.reason, s.channel.uniqueid)
    # after the drain the server is gone: the dialplan blocks (FAILURE)
    after = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["0612345678", "Energia Uno"])
    assert after.agistatus == "FAILURE" and not after.dialplan_allows
    # the batched rows extend the audit log's hash chain like any other writer's
    import subprocess
    from fastagi_support import rpo_guard_bin
    verify = subprocess.run([rpo_guard_bin(), "--config", str(env.conf), "audit", "verify"],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sighup_reopens_and_keeps_serving(sample, server):
    env, _ = sample
    server.send(signal.SIGHUP)
    time.sleep(0.2)
    s = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["0612345678", "Energia Uno"])
    assert (s.agistatus, s.result, s.reason) == ("SUCCESS", "ALLOW", "not_registered")
    assert server.proc.poll() is None


def test_simulate_call_fastagi_cli(sample, server):
    import subprocess
    from fastagi_support import rpo_guard_bin

    out = subprocess.run([rpo_guard_bin(), "simulate-call", "--quiet", "--fastagi", f"127.0.0.1:{server.port}",
                          "3331234567", "--brand", "Energia Uno"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stdout.strip() == "RPO_RESULT=BLOCK RPO_REASON=rpo_registered AGISTATUS=SUCCESS -> HANGUP(21)"


@pytest.mark.parametrize("threads", [0, 2], ids=["in-loop", "threads"])
def test_lookup_past_deadline_blocks_and_is_recorded(sample, threads):
    env, _ = sample
    env.write_config(f"[store]\nbusy_timeout_ms = 5000\n[fastagi]\ndeadline_ms = 100\nlookup_threads = {threads}\n")
    c = sqlite3.connect(env.cfg.register_db)
    c.execute("PRAGMA journal_mode = DELETE")  # rollback mode: an exclusive lock stops readers
    c.close()
    server = Server(env.conf)
    try:
        ok = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["0612345678", "Energia Uno"])
        assert (ok.result, ok.reason) == ("ALLOW", "not_registered")
        lock = sqlite3.connect(env.cfg.register_db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            s = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["0612345678", "Energia Uno"])
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert (s.agistatus, s.result, s.reason, s.dialplan_allows) == ("SUCCESS", "BLOCK", "error", False)
        row = [r for r in env.audit_rows() if r["id"] == int(s.channel.variables["RPO_AUDIT_ID"])][0]
        assert (row["decision"], row["reason"], row["via"]) == ("BLOCK", "error", "fastagi")
        # in the loop SQLite gives up at the deadline; a worker thread is abandoned at it
        assert ("locked" if threads == 0 else "deadline of 100 ms exceeded") in row["detail"]
        again = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["0612345678", "Energia Uno"])
        assert (again.result, again.reason) == ("ALLOW", "not_registered")  # the server recovered
    finally:
        assert server.stop() == 0
    assert "blocked on error" in env.failures.read_text()


@pytest.mark.parametrize("line, key", [("listen = localhost:4573", "listen"), ("listen = 127.0.0.1", "listen"),
                                       ("allowed_peers = 10.0.0.300", "allowed_peers"),
                                       ("allowed_peers = ,", "allowed_peers"), ("deadline_ms = 0", "deadline_ms"),
                                       ("lookup_threads = -1", "lookup_threads"),
                                       ("event_loop = trio", "event_loop")])
def test_bad_fastagi_settings_are_named(env, line, key):
    from rpo_guard import config as config_mod
    env.write_config(f"[fastagi]\n{line}\n")
    with pytest.raises(config_mod.ConfigError, match=rf"\[fastagi\] {key} = "):
        env.cfg


def test_settings_parse(env):
    import ipaddress
    env.write_config("[fastagi]\nlisten = [::1]:0\nallowed_peers = 10.0.0.0/8, 127.0.0.1\n")
    assert env.cfg.listen == ("::1", 0)
    assert ipaddress.ip_address("10.2.3.4") in env.cfg.allowed_peers[0]


def test_sample_servers_run_on_the_loop_asked_for(sample):
    env, _ = sample
    assert env.cfg.event_loop == env.event_loop and env.cfg.read_timeout_ms == 500


def test_import_in_place_is_seen_without_reopen(sample, server):
    env, _ = sample
    before = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["3407654321", "Energia Uno"])
    assert (before.result, before.reason) == ("BLOCK", "not_consulted")
    env.consult([("3407654321", "non iscritto")], days_ago=1, name="late.csv")  # a WAL transaction in place
    after = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["3407654321", "Energia Uno"])
    assert (after.result, after.reason) == ("ALLOW", "not_registered")


def test_unwritable_audit_log_refuses_the_call(sample):
    env, _ = sample
    audit = Path(env.cfg.audit_db)
    for p in audit.parent.glob("audit.db*"):
        p.unlink()
    audit.mkdir()  # not a database: every write fails (root ignores file modes)
    server = Server(env.conf)
    try:
        s = run_fastagi("127.0.0.1", server.port, "rpo_guard", ["0612345678", "Energia Uno"])
    finally:
        server.stop()
    assert (s.agistatus, s.result, s.reason, s.dialplan_allows) == ("SUCCESS", "BLOCK", "error", False)
    assert "RPO_AUDIT_ID" not in s.channel.variables
    log = env.failures.read_text()
    assert "audit log unwritable" in log and "'decision': 'ALLOW'" in log  # the attempt is kept there


@pytest.fixture
def writer(env):
    """An audit writer on an event loop of its own (not running: tests drive it)."""
    import asyncio
    env.init()
    loop = asyncio.new_event_loop()
    audit = writer_mod.AuditWriter(env.cfg, loop)
    yield audit
    audit.close()
    loop.close()


def _rows(n: int) -> list[dict]:
    return [{"at": "2026-11-25T10:00:00.000+01:00", "dialed": f"33312345{i:02d}", "decision": "ALLOW",
             "reason": "not_registered", "basis": {}, "via": "fastagi"} for i in range(n)]


def _write_through(writer, rows) -> list:
    got = []
    for row in rows:
        writer.submit(row, lambda audit_id, error: got.append((audit_id, error)))
    writer.flush()
    return got


def test_audit_wal_is_checkpointed_by_the_thread_not_by_the_commits(env, writer, monkeypatch):
    """The writer's own automatic checkpoints are off; the checkpoint thread moves the rows into audit.db."""
    monkeypatch.setattr(checkpoint_mod, "CHECKPOINT_EVERY", 0.05)
    got = _write_through(writer, _rows(20))
    assert [e for _, e in got] == [None] * 20
    assert writer._log.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    deadline = time.monotonic() + 10
    while writer.checkpointer.runs == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.checkpointer.runs >= 1
    # the main file itself (WAL ignored) holds every row: the thread's checkpoint copied them
    main = sqlite3.connect(f"file:{env.cfg.audit_db}?immutable=1", uri=True)
    assert main.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 20
    main.close()


def _wal_restarts(path) -> int:
    """The WAL header's checkpoint sequence number: +1 each time the WAL starts over from its beginning."""
    with open(f"{path}-wal", "rb") as fh:
        return int.from_bytes(fh.read(16)[12:16], "big")


def test_audit_wal_starts_over_while_rows_keep_coming(env, writer, monkeypatch):
    """Commits that never pause must not starve the checkpoints: each run ends with no commit
    landing, so the next commit starts the WAL over instead of growing it without bound."""
    monkeypatch.setattr(checkpoint_mod, "CHECKPOINT_EVERY", 0.02)
    _write_through(writer, _rows(1))
    runs0, restarts0 = writer.checkpointer.runs, _wal_restarts(env.cfg.audit_db)
    deadline = time.monotonic() + 60
    while writer.checkpointer.runs < runs0 + 10 and time.monotonic() < deadline:
        assert _write_through(writer, _rows(1))[0][1] is None  # one commit after another
    runs = writer.checkpointer.runs - runs0
    assert runs >= 10
    assert _wal_restarts(env.cfg.audit_db) - restarts0 >= runs - 1


def test_the_checkpoint_thread_starts_the_wal_over_itself(env, writer, monkeypatch):
    """The first write after a full checkpoint starts the WAL over and syncs its header:
    the checkpoint thread makes that write, so the loop's next commit does not pay the fsync."""
    monkeypatch.setattr(checkpoint_mod, "CHECKPOINT_EVERY", 3600)  # the runs below are made by hand
    for n in (3, 2, 4):
        _write_through(writer, _rows(n))
        before = _wal_restarts(env.cfg.audit_db)
        writer.checkpointer.checkpoint()
        assert _wal_restarts(env.cfg.audit_db) == before + 1  # with no commit of the writer since
        assert [e for _, e in _write_through(writer, _rows(1))] == [None]
        assert _wal_restarts(env.cfg.audit_db) == before + 1  # the writer appended, no restart of its own
    assert writer._log.conn.execute("PRAGMA user_version").fetchone()[0] == AUDIT_SCHEMA_VERSION  # unchanged


def _fds_on(path) -> list[int]:
    """This process's descriptors open on ``path``'s inode."""
    import os
    st = os.stat(path)
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            s = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
            found.append(int(name))
    return found


def test_the_checkpoint_syncs_audit_db_before_holding_off_the_commits(env, writer, monkeypatch):
    """audit.db is synced between the passes, not under the lock, on a descriptor of the
    thread's own that stays open (closing it would drop SQLite's POSIX locks) until the
    writer has closed its connection."""
    import os
    monkeypatch.setattr(checkpoint_mod, "CHECKPOINT_EVERY", 3600)  # the runs below are made by hand
    synced = []
    real = checkpoint_mod._sync

    def spy(fd):
        st, db = os.fstat(fd), os.stat(env.cfg.audit_db)
        synced.append(((st.st_dev, st.st_ino) == (db.st_dev, db.st_ino), writer.checkpointer.lock.locked()))
        real(fd)

    monkeypatch.setattr(checkpoint_mod, "_sync", spy)
    for n in (3, 2):
        _write_through(writer, _rows(n))
        writer.checkpointer.checkpoint()
    assert synced == [(True, False), (True, False)]  # audit.db's inode, the commits not held off
    main = sqlite3.connect(f"file:{env.cfg.audit_db}?immutable=1", uri=True)
    assert main.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 5
    main.close()
    ours = set(writer.checkpointer._fds.values())
    assert len(ours) == 1 and ours <= set(_fds_on(env.cfg.audit_db))
    writer.close()
    assert not ours & set(_fds_on(env.cfg.audit_db)) and writer.checkpointer._fds == {}


def test_the_checkpoint_thread_runs_at_a_lower_priority_than_the_loop(env, writer, monkeypatch):
    import os
    monkeypatch.setattr(checkpoint_mod, "CHECKPOINT_EVERY", 3600)
    _write_through(writer, _rows(1))  # starts the thread
    thread = writer.checkpointer._thread
    deadline = time.monotonic() + 10
    while thread.native_id is None and time.monotonic() < deadline:
        time.sleep(0.01)

    def nice(tid) -> int:
        return int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])

    mine = nice(threading.get_native_id())
    while nice(thread.native_id) == mine and time.monotonic() < deadline:
        time.sleep(0.01)
    assert nice(thread.native_id) == min(mine + checkpoint_mod.CHECKPOINT_NICE, 19)
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # the loop's own is unchanged


def test_a_quiet_server_commits_at_once_and_a_busy_one_waits_for_the_batch(env, writer):
    import asyncio

    got = []
    writer.submit(_rows(1)[0], lambda audit_id, error: got.append(audit_id))
    assert got == [1]  # no other call in flight: committed before submit returns
    writer.more_coming = lambda: True
    for row in _rows(3):
        writer.submit(row, lambda audit_id, error: got.append(audit_id))
    assert got == [1]  # busy: the rows wait for the window
    writer.loop.run_until_complete(asyncio.sleep(writer_mod.BATCH_WINDOW * 5))
    assert got == [1, 2, 3, 4] and writer.batches == 2  # one commit for the three


def test_a_commit_during_a_checkpoints_last_pass_waits_without_stopping_the_loop(env, writer):
    """While the checkpoint thread holds the lock, the loop's flush is put off, the loop goes on,
    and the row is committed once the lock is free."""
    import asyncio

    async def scenario():
        got = []
        writer.submit(_rows(1)[0], lambda audit_id, error: got.append((audit_id, error)))
        ticks = 0
        for _ in range(20):  # the loop keeps turning while the commit waits
            await asyncio.sleep(0.001)
            ticks += 1
        assert got == [] and writer.deferred >= 1
        threading.Timer(0.01, writer.checkpointer.lock.release).start()
        for _ in range(2000):
            if got:
                break
            await asyncio.sleep(0.001)
        return got, ticks

    _write_through(writer, _rows(1))
    writer.checkpointer.lock.acquire()
    got, ticks = writer.loop.run_until_complete(scenario())
    assert ticks == 20 and got == [(2, None)]


def test_a_failing_checkpoint_hands_checkpoints_back_to_the_writer(env, writer, monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint_mod, "CHECKPOINT_EVERY", 0.05)
    _write_through(writer, _rows(2))
    # the thread now checkpoints a path that cannot be a database (a folder): a real failure
    broken = tmp_path / "elsewhere"
    (broken / "audit.db").mkdir(parents=True)
    writer.checkpointer.cfg = env.cfg._replace(data_dir=str(broken))
    deadline = time.monotonic() + 10
    while not writer.checkpointer.failed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.checkpointer.failed
    got = _write_through(writer, _rows(3))  # the next commit takes the checkpoints back
    assert [e for _, e in got] == [None] * 3
    assert writer._log.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    assert "checkpoint failed" in env.failures.read_text()


def test_missing_uvloop_is_named_and_the_server_does_not_start(env, tmp_path):
    import os
    import subprocess
    from fastagi_support import rpo_guard_bin

    env.init()  # the shipped default: event_loop = uvloop
    fake = tmp_path / "shadow"
    fake.mkdir()
    (fake / "uvloop.py").write_text("raise ImportError('No module named uvloop')\n")  # as on a machine without it
    run_env = dict(os.environ, RPO_GUARD_CONFIG=str(env.conf), PYTHONPATH=str(fake))
    out = subprocess.run([rpo_guard_bin(), "serve", "--listen", "127.0.0.1:0"], env=run_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "event_loop = uvloop, but uvloop cannot be imported" in out.stderr and "event_loop = asyncio" in out.stderr


def test_a_lookup_answer_that_never_comes_drops_the_call_instead_of_holding_it(env):
    """The backstop behind the lookup deadline: a session stuck waiting for its lookup is
    dropped (no answer: the dialplan blocks) and logged, never left open."""
    import asyncio
    from rpo_guard.fastagi.server import FastAGIServer
    from rpo_guard.harness import Channel, encode_env

    env.write_config("[fastagi]\ndeadline_ms = 50\nread_timeout_ms = 100\n")
    env.init()

    class LostAnswer(FastAGIServer):
        def check(self, session, *args):
            pass  # the answer is lost: checked() is never called

    async def scenario():
        server = LostAnswer(env.cfg, ("127.0.0.1", 0))
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(encode_env(Channel().env_block("agi://127.0.0.1/rpo_guard", ["0612345678", "B"],
                                                    network_script="rpo_guard")))
        got = await asyncio.wait_for(reader.read(), 5)  # EOF once the session is dropped
        stats = server.stats
        server.request_stop()
        await server.wait_stopped()
        return got, stats

    got, stats = asyncio.run(scenario())
    assert got == b"" and stats.protocol_errors == 1 and stats.allowed == 0
    assert "no lookup answer" in env.failures.read_text()
