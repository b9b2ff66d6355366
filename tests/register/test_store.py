"""The per-call reader: a long-lived Store sees every change another process commits."""
from conftest import today_rome
from rpo_guard.register.conduct import caller_id_add, caller_id_remove
from rpo_guard.register.store import Store
from rpo_guard.register.lists import dnc_add


def test_long_lived_store_sees_new_caller_ids_and_dnc_entries(env):
    env.init()
    env.consult([("3331234567", "no")])
    store = Store(env.cfg.register_db)
    try:
        first = store.facts("+393331234567", "B", today_rome())
        assert first.declared_caller_ids == () and first.dnc == ()
        assert store.facts("+393331234567", "B", today_rome()).declared_caller_ids == ()  # served from cache
        caller_id_add(env.cfg, "0612340000", "B")
        dnc_add(env.cfg, "3331234567", "", "complaint")
        later = store.facts("+393331234567", "B", today_rome())
        assert later.declared_caller_ids == ("+390612340000",)
        assert [d.reason for d in later.dnc] == ["complaint"]
        caller_id_remove(env.cfg, "0612340000", "B")
        assert store.facts("+393331234567", "B", today_rome()).declared_caller_ids == ()
    finally:
        store.close()
