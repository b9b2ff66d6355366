"""Brand policies through the real FastAGI server (`rpo-guard serve`): the same cases as the
process AGI, attempt caps counted from audit.db plus the attempts still in flight."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from brand_policy_table import (BRANDS_CONFIG, CAPPED, CASES, FREE, LINE_0843, LINE_0844, PLAIN, build,
                                insert_attempts)
from conftest import agi_path
from fastagi_support import Server
from rpo_guard.harness import Channel, run_fastagi, run_process_agi

FREE_E164 = "+390612345678"


def call(server, dialed, brand, caller_id="0612340000", uniqueid="1795339068.25"):
    s = run_fastagi("127.0.0.1", server.port, "rpo_guard", [dialed, brand],
                    Channel(extension="3331234567", callerid=caller_id, uniqueid=uniqueid))
    assert s.agistatus == "SUCCESS", s.transcript
    return s


@pytest.fixture(scope="module")
def brands_server(tmp_path_factory):
    env = build(tmp_path_factory.mktemp("brands-fastagi"))
    server = Server(env.conf)
    yield env, server
    server.stop()


@pytest.mark.parametrize("dialed, brand, caller_id, decision, reason", CASES)
def test_cases_same_through_fastagi(brands_server, dialed, brand, caller_id, decision, reason):
    env, server = brands_server
    f = call(server, dialed, brand, caller_id)
    assert (f.result, f.reason, f.dialplan_allows) == (decision, reason, decision == "ALLOW")
    p = run_process_agi(agi_path(), [dialed, brand], Channel(extension="3331234567", callerid=caller_id),
                        env=env.agi_env)
    assert (p.result, p.reason) == (f.result, f.reason)
    rows = {r["id"]: r for r in env.audit_rows()}
    frow, prow = rows[int(f.channel.variables["RPO_AUDIT_ID"])], rows[int(p.channel.variables["RPO_AUDIT_ID"])]
    assert (frow["basis"], frow["detail"]) == (prow["basis"], prow["detail"])


@pytest.fixture(params=[0, 2], ids=["in-loop", "threads"])
def capped_server(tmp_path, request):
    env = build(tmp_path, f"\n[fastagi]\nlookup_threads = {request.param}\n")
    server = Server(env.conf)
    yield env, server
    assert server.stop() == 0


def test_cap_reached_at_exactly_n_and_refusals_not_counted(capped_server):
    env, server = capped_server
    # committed by others (history, and a process AGI while the server runs) counts; refusals do not
    insert_attempts(env, [(FREE_E164, CAPPED, "BLOCK", 0), (FREE_E164, CAPPED, "ALLOW", 30),
                          (FREE_E164, PLAIN, "ALLOW", 0)])
    assert call(server, FREE, CAPPED).result == "ALLOW"                  # 1 of 2
    p = run_process_agi(agi_path(), [FREE, CAPPED], Channel(callerid="0612340000"), env=env.agi_env)
    assert p.result == "ALLOW"                                            # 2 of 2, written by another process
    s = call(server, FREE, CAPPED)
    assert (s.result, s.reason, s.dialplan_allows) == ("BLOCK", "attempt_cap", False)
    row = [r for r in env.audit_rows() if r["id"] == int(s.channel.variables["RPO_AUDIT_ID"])][0]
    assert '"attempts": 2' in row["basis"] and "the cap is 2 in 30 day(s)" in row["detail"]
    assert call(server, FREE, CAPPED).reason == "attempt_cap"
    assert call(server, FREE, PLAIN).result == "ALLOW"  # another brand: no cap


def test_a_refused_call_is_not_counted(tmp_path):
    env = build(tmp_path)
    env.write_config(BRANDS_CONFIG.replace("max_attempts = 2\nattempt_window_days = 30\n",
                                           "max_attempts = 1\npurpose = commercial\n"))
    server = Server(env.conf)
    try:
        for _ in range(3):
            assert call(server, FREE, CAPPED, LINE_0843).reason == "caller_id_not_allowed"
        assert call(server, FREE, CAPPED, LINE_0844).result == "ALLOW"
        assert call(server, FREE, CAPPED, LINE_0844).reason == "attempt_cap"
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("threads", [0, 2], ids=["in-loop", "threads"])
def test_concurrent_calls_to_one_number_take_exactly_n_places(tmp_path, threads):
    """Rows wait in the group commit while more calls are checked: those count too, so of many
    calls at once to one number exactly max_attempts are allowed."""
    cap, calls = 5, 40
    env = build(tmp_path, f"\n[attempts]\nmax_attempts = {cap}\n[fastagi]\nlookup_threads = {threads}\n")
    server = Server(env.conf)
    results, start = [], threading.Barrier(calls)

    def one(i):
        start.wait()
        s = run_fastagi("127.0.0.1", server.port, "rpo_guard", [FREE, PLAIN if i % 2 else CAPPED],
                        Channel(extension="3331234567", callerid="0612340000", uniqueid=f"1795339{i:03d}.{i}"))
        results.append((s.agistatus, s.result, s.reason, i % 2))

    try:
        workers = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
    finally:
        assert server.stop() == 0
    assert len(results) == calls and {r[0] for r in results} == {"SUCCESS"}
    allowed = [r for r in results if r[1] == "ALLOW"]
    assert len(allowed) == cap, results
    assert {r[2] for r in results if r[1] == "BLOCK"} == {"attempt_cap"}
    assert sum(1 for r in allowed if r[3] == 0) <= 2  # CAPPED's own cap holds inside the global one
    rows = [r for r in env.audit_rows() if r["e164"] == FREE_E164]
    assert len(rows) == calls and sum(r["decision"] == "ALLOW" for r in rows) == cap
    # the committed log agrees: every ALLOW row was, when written, under the cap
    assert "audit_failed=0" in server.stderr


def test_unreadable_audit_log_fails_closed(tmp_path):
    env = build(tmp_path)
    server = Server(env.conf)
    try:
        assert call(server, FREE, CAPPED).result == "ALLOW"
        conn = sqlite3.connect(env.cfg.audit_db)
        conn.execute("ALTER TABLE attempts RENAME TO attempts_gone")  # the count has nothing to read
        conn.commit()
        conn.close()
        s = call(server, FREE, CAPPED)
        assert (s.result, s.reason, s.dialplan_allows) == ("BLOCK", "error", False)
    finally:
        server.stop()
    assert "attempts" in env.failures.read_text()


def test_rows_waiting_in_the_group_commit_count(tmp_path):
    """In the loop: calls checked while earlier rows wait for their group commit see those rows
    (held in flight), and give the places back once the rows are committed."""
    import asyncio
    import time

    from rpo_guard.fastagi.server import FastAGIServer
    from rpo_guard.fastagi.session import CHECKING
    from rpo_guard.guard import audit_row

    env = build(tmp_path, "\n[attempts]\nmax_attempts = 3\n")

    class Probe:
        """The part of a session the check and the writer talk to."""
        state = CHECKING

        def __init__(self, server, brand):
            self.server, self.brand, self.audit_id = server, brand, None

        def checked(self, outcome):
            self.outcome = outcome
            row = audit_row(outcome, {}, FREE, self.brand, None, time.perf_counter(), "fastagi")
            self.server.audit.submit(row, lambda audit_id, error: setattr(self, "audit_id", audit_id),
                                     outcome.held)

    async def scenario():
        server = FastAGIServer(env.cfg, ("127.0.0.1", 0))
        await server.start()
        server.audit.more_coming = lambda: True  # every row waits for its batch
        probes = [Probe(server, PLAIN if i % 2 else CAPPED) for i in range(8)]
        for p in probes:
            server.check(p, FREE, p.brand, "0612340000", "0")
        pending = (len(server.inflight), sum(p.audit_id is None for p in probes))
        server.audit.flush()
        after = (len(server.inflight), sum(p.audit_id is not None for p in probes))
        later = Probe(server, PLAIN)
        server.check(later, FREE, PLAIN, "0612340000", "0")
        server.audit.flush()
        server.request_stop()
        await server.wait_stopped()
        return probes, pending, after, later

    probes, pending, after, later = asyncio.run(scenario())
    verdicts = [(p.brand, p.outcome.verdict.decision, p.outcome.verdict.reason) for p in probes]
    assert [v[1] for v in verdicts].count("ALLOW") == 3, verdicts
    assert pending == (3, 8)  # nothing committed yet, three places held
    assert after == (0, 8)    # committed: the places are given back, the rows count from audit.db now
    assert later.outcome.verdict.reason == "attempt_cap" and later.outcome.held is None
    assert sum(r["decision"] == "ALLOW" for r in env.audit_rows() if r["e164"] == FREE_E164) == 3
