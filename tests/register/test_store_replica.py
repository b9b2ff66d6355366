"""The per-call reader on a fleet replica: the centre's confirmation, read with the facts
from one snapshot, but only when another connection has committed since it was read."""
import sqlite3

from conftest import today_rome
from rpo_guard.fleet.replica import ensure
from rpo_guard.register.lists import dnc_add
from rpo_guard.register.store import Store

N = "+393331234567"


def confirm(env, at) -> None:
    conn = sqlite3.connect(env.cfg.register_db)
    ensure(conn, "a")
    with conn:
        conn.execute("UPDATE fleet_replica SET confirmed_at = ? WHERE id = 1", (at,))
    conn.close()


def test_a_replica_reads_its_confirmation_only_after_a_commit_and_always_sees_the_new_one(env):
    env.init()
    env.consult([("3331234567", "no")])
    confirm(env, 1000.0)
    store = Store(env.cfg.register_db, clock=lambda: 1010.0)
    statements = []
    store.conn.set_trace_callback(statements.append)
    try:
        assert store.facts(N, "", today_rome()).replica_age == 10.0
        for _ in range(20):
            assert store.facts(N, "", today_rome()).replica_age == 10.0
        assert sum("fleet_replica" in s for s in statements) == 1  # read once, then kept
        confirm(env, 900.0)  # another connection commits: the next call reads it again
        assert store.facts(N, "", today_rome()).replica_age == 110.0
        dnc_add(env.cfg, N, "", "complaint")  # any commit: the facts and the confirmation read together again
        facts = store.facts(N, "", today_rome())
        assert facts.replica_age == 110.0 and [d.reason for d in facts.dnc] == ["complaint"]
        conn = sqlite3.connect(env.cfg.register_db)
        with conn:
            conn.execute("DELETE FROM fleet_replica")
        conn.close()
        assert store.facts(N, "", today_rome()).replica_age is None  # never confirmed: refused as stale
    finally:
        store.close()


def test_a_single_box_never_reads_a_confirmation(env):
    env.init()
    env.consult([("3331234567", "no")])
    store = Store(env.cfg.register_db)
    try:
        assert store.facts(N, "", today_rome()).replica_age is None
    finally:
        store.close()
