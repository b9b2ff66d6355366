"""Fleet fixtures (registered for every test by tests/conftest.py): one throwaway PostgreSQL cluster per test session (unix socket only), a fresh
central database per test, boxes (data folders with their config) whose agents run as real processes.

Skipped with the reason when no PostgreSQL server is installed; with RPO_GUARD_REQUIRE_POSTGRES=1
(.ci/run sets it) a missing server fails instead.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rpo_guard.fleet.sandbox import Cluster, find_bindir  # noqa: E402


@pytest.fixture(scope="session")
def cluster():
    bindir = find_bindir()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        bindir, missing = None, "psycopg (3) is not installed: pip install 'rpo_guard[fleet]'"
    else:
        missing = "no PostgreSQL server (initdb) installed: apt-get install postgresql"
    if bindir is None:
        reason = missing
        if os.environ.get("RPO_GUARD_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (RPO_GUARD_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    c = Cluster(bindir)
    c.start()
    yield c
    c.destroy()


@pytest.fixture
def central(cluster):
    """The conninfo of a fresh central database (schema migrated); the cluster is running again after the test."""
    info = cluster.new_database()
    yield info
    cluster.start() if not _running(cluster) else None


def _running(cluster) -> bool:
    r = cluster._run("pg_ctl", "-D", cluster.data, "status", check=False)
    return r.returncode == 0


from rpo_guard.fleet.sandbox import wait_for  # noqa: E402,F401


def _today():
    from datetime import datetime
    from zoneinfo import ZoneInfo
    return datetime.now(ZoneInfo("Europe/Rome")).date()


class Box:
    """A box of the fleet: its data folder, config and agent process."""

    def __init__(self, root: Path, name: str, central: str, staleness: int = 60, heartbeat: int = 1):
        self.root, self.name, self.central, self.staleness, self.heartbeat = root, name, central, staleness, heartbeat
        self.agent = None
        self.agent_log = root / "agent.log"
        self.conf = root / "rpo-guard.conf"
        self.data = root / "data"
        self.write_config()

    def write_config(self, extra: str = "") -> None:
        self.conf.write_text(
            f"[paths]\ndata_dir = {self.data}\nlog_file = {self.root / 'failures.log'}\n"
            f"[fleet]\ncentral = {self.central}\nbox = {self.name}\nmax_staleness_seconds = {self.staleness}\n"
            f"heartbeat_seconds = {self.heartbeat}\n[conduct]\ncalling_hours = off\ncaller_id_check = off\n{extra}")
        self._cfg = None

    @property
    def cfg(self):
        from rpo_guard import config as config_mod
        if self._cfg is None:
            self._cfg = config_mod.load(str(self.conf))
        return self._cfg

    def csv(self, name: str, text: str) -> Path:
        p = self.root / name
        p.write_text(text, encoding="utf-8")
        return p

    def consult(self, rows, days_ago: int = 1, brand: str = "", name: str | None = None):
        from datetime import timedelta

        from rpo_guard.sync import import_consultation
        lines = ["number,status"] + [f"{r[0]},{r[1]}" for r in rows]
        path = self.csv(name or f"consult-{days_ago}-{brand}-{len(rows)}.csv", "\n".join(lines) + "\n")
        return import_consultation(self.cfg, path, _today() - timedelta(days=days_ago), brand, who="test")

    def consents(self, rows, name: str = "consents.csv"):
        from rpo_guard.sync import import_consents
        lines = ["number,brand,kind,given_at,ends_at,channel,evidence"] + [
            f"{n},{b},{k},{g},{e},test,ev-{i}" for i, (n, b, k, g, e) in enumerate(rows)]
        return import_consents(self.cfg, self.csv(name, "\n".join(lines) + "\n"), who="test")

    def init(self):
        r = self.cli("init")
        assert r.returncode == 0, r.stderr
        return self

    def cli(self, *args, check=False, timeout=120):
        return subprocess.run([sys.executable, "-m", "rpo_guard.cli.main", "--config", str(self.conf), *args],
                              capture_output=True, text=True, timeout=timeout, check=check)

    def start_agent(self, *extra):
        log = open(self.agent_log, "ab")
        self.agent = subprocess.Popen([sys.executable, "-m", "rpo_guard.cli.main", "--config", str(self.conf),
                                       "fleet", "agent", *extra], stdout=log, stderr=log)
        log.close()
        return self.agent

    def stop_agent(self, sig=signal.SIGTERM):
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(sig)
            try:
                self.agent.wait(20)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        self.agent = None

    def replica(self) -> dict:
        import sqlite3

        from rpo_guard.fleet.replica import state
        conn = sqlite3.connect(f"file:{self.cfg.register_db}?mode=ro", uri=True, timeout=5)
        try:
            return state(conn)
        finally:
            conn.close()

    def check(self, number: str, brand: str = "", clock=None):
        """The decision a call would get on this box now (the real store and guard, in this process)."""
        import time as _time

        from rpo_guard.guard import check_call
        from rpo_guard.register.store import Store
        store = Store(self.cfg.register_db, 5000, clock=clock or _time.time)
        try:
            return check_call(self.cfg, store, number, brand).verdict
        finally:
            store.close()


@pytest.fixture
def make_box(tmp_path, central):
    boxes = []

    def make(name: str, **kw) -> Box:
        root = tmp_path / name
        root.mkdir()
        b = Box(root, name, central, **kw).init()
        boxes.append(b)
        return b
    yield make
    for b in boxes:
        b.stop_agent(signal.SIGKILL)
