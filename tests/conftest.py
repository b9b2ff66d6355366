"""Shared fixtures: a real configuration, real SQLite files, the real AGI."""
from __future__ import annotations

import os
import shutil
import sys
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from rpo_guard import config as config_mod

ROME = ZoneInfo("Europe/Rome")
TRANSCRIPTS = Path(__file__).resolve().parent / "fixtures" / "asterisk-transcripts"  # recorded sessions (README there)


_test_day: date | None = None  # today when the running test started (see _one_day_per_test)


def today_rome() -> date:
    """Today in Europe/Rome: the day the running test started, so that a test running across
    midnight compares what it finds with the dates it wrote (outside a test: the clock)."""
    return _test_day or datetime.now(ROME).date()


@pytest.fixture(autouse=True)
def _one_day_per_test():
    global _test_day
    _test_day = datetime.now(ROME).date()
    yield
    _test_day = None


def agi_path() -> str:
    here = Path(sys.executable).parent / "rpo-guard-agi"
    found = str(here) if here.exists() else shutil.which("rpo-guard-agi")
    if not found:
        pytest.fail("rpo-guard-agi is not installed (run ./dev test, which installs the project)")
    return found


NO_CONDUCT = "calling_hours = off\ncaller_id_check = off\n"


class Env:
    """A data folder with its config file; helpers to load data through the real importers."""

    def __init__(self, root: Path):
        self.root = root
        self.event_loop = None  # [fastagi] event_loop for the servers this env starts (None: the default)
        self.conf = root / "rpo-guard.conf"
        self.data = root / "data"
        self.failures = root / "failures.log"
        self.write_config()

    def write_config(self, extra: str = "", conduct: str = NO_CONDUCT) -> None:
        """``conduct`` is the body of the [conduct] section.

        By default the calling-hours and caller-ID rules are off, so that tests
        about other rules pass whatever the time of day and with the harness's
        default channel (caller ID ``unknown``). Tests of the conduct rules
        pass ``conduct=""`` (the shipped defaults: both on) or their own settings.
        """
        section = f"[conduct]\n{conduct}" if conduct else ""
        if self.event_loop:
            line = f"event_loop = {self.event_loop}\n"
            extra = extra.replace("[fastagi]\n", "[fastagi]\n" + line) if "[fastagi]\n" in extra \
                else f"{extra}\n[fastagi]\n{line}"
        self.conf.write_text(f"[paths]\ndata_dir = {self.data}\nlog_file = {self.failures}\n{extra}\n{section}")
        self._cfg = None

    @property
    def cfg(self):
        if self._cfg is None:
            self._cfg = config_mod.load(str(self.conf))
        return self._cfg

    @property
    def agi_env(self) -> dict:
        return {config_mod.ENV_VAR: str(self.conf)}

    def init(self):
        from rpo_guard.audit.log import AuditLog
        from rpo_guard.register.schema import open_db
        open_db(self.cfg.register_db).close()
        AuditLog(self.cfg.audit_db).close()
        return self

    def csv(self, name: str, text: str) -> Path:
        p = self.root / name
        p.write_text(text, encoding="utf-8")
        return p

    def consult(self, rows: list[tuple], days_ago: int = 1, brand: str = "", name: str | None = None):
        """Import a consultation result; rows are (number, status[, registration_date])."""
        from rpo_guard.sync import import_consultation
        lines = ["number,status,registration_date"] + [
            f"{r[0]},{r[1]},{r[2] if len(r) > 2 else ''}" for r in rows]
        path = self.csv(name or f"consult-{days_ago}-{brand or 'shared'}-{len(rows)}.csv", "\n".join(lines) + "\n")
        return import_consultation(self.cfg, path, today_rome() - timedelta(days=days_ago), brand, who="test")

    def consents(self, rows: list[tuple], name: str = "consents.csv"):
        """rows: (number, brand, kind, given_at, ends_at)."""
        from rpo_guard.sync import import_consents
        lines = ["number,brand,kind,given_at,ends_at,channel,evidence"] + [
            f"{n},{b},{k},{g},{e},test,ev-{i}" for i, (n, b, k, g, e) in enumerate(rows)]
        return import_consents(self.cfg, self.csv(name, "\n".join(lines) + "\n"), who="test")

    def audit_rows(self) -> list[dict]:
        import sqlite3
        conn = sqlite3.connect(self.cfg.audit_db)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM attempts ORDER BY id")]
        finally:
            conn.close()


@pytest.fixture
def env(tmp_path, monkeypatch) -> Env:
    e = Env(tmp_path)
    monkeypatch.setenv(config_mod.ENV_VAR, str(e.conf))
    return e


def days(n: int) -> str:
    """An ISO date n days before today (Europe/Rome)."""
    return (today_rome() - timedelta(days=n)).isoformat()


# Fuzzing budget: a bounded profile by default (CI), a long one on demand:
#   HYPOTHESIS_PROFILE=long ./dev test tests/test_fuzz.py
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ---------------------------------------------------------------- a real Asterisk (tests/astsandbox)
# Tests marked `asterisk` run calls through a real Asterisk started for the session. Without
# one they are skipped with the reason; with RPO_REQUIRE_ASTERISK=1 (CI) that skip is a failure.
REQUIRE_ASTERISK = os.environ.get("RPO_REQUIRE_ASTERISK") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "asterisk: runs calls through a real Asterisk (tests/astsandbox); skipped "
                                       "without one, a failure then when RPO_REQUIRE_ASTERISK=1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ASTERISK and report.skipped and item.get_closest_marker("asterisk") is not None:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped, but RPO_REQUIRE_ASTERISK=1: {reason}"


@pytest.fixture(scope="session")
def asterisk_sandbox():
    """One sandboxed Asterisk for the whole session (astsandbox.Sandbox)."""
    import tempfile

    from astsandbox import Sandbox, find_asterisk
    binary, how = find_asterisk()
    if binary is None:
        pytest.skip(how)
    # a short folder: the control socket's path must fit in 108 bytes
    root = Path(tempfile.mkdtemp(prefix="rpo-ast-", dir="/tmp"))
    sandbox = Sandbox(binary, root)
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)


# Fleet mode's fixtures (cluster, central, make_box): a throwaway PostgreSQL per session.
from fleet_support import central, cluster, make_box  # noqa: E402,F401
