"""Permissions of the data folder and the databases, on real files (the suite runs as root,
so chown to an existing group such as nogroup works)."""
from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import agi_path
from rpo_guard import config as config_mod
from rpo_guard.harness import Channel, run_process_agi

def _group() -> str:
    for name in ("nogroup", "daemon", "nobody"):
        try:
            grp.getgrnam(name)
            return name
        except KeyError:
            continue
    return ""


GROUP = _group() if os.geteuid() == 0 else ""
root_only = pytest.mark.skipif(os.geteuid() != 0 or not GROUP, reason="chown to another group needs root and a group")


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def group_of(p) -> str:
    return grp.getgrgid(os.stat(p).st_gid).gr_name


def rpo_guard(env, *args):
    return subprocess.run([str(Path(sys.executable).parent / "rpo-guard"), "--config", str(env.conf), *args],
                          capture_output=True, text=True, timeout=60)


def db_files(env):
    return [p for p in env.data.iterdir() if p.name.startswith(("rpo.db", "audit.db"))]


def test_init_default_is_0750_folder_and_0640_databases(env):
    r = rpo_guard(env, "init")
    assert r.returncode == 0 and r.stderr == ""
    assert mode(env.data) == 0o750
    files = db_files(env)
    assert {p.name for p in files} >= {"rpo.db", "audit.db"}
    assert {p.name: mode(p) for p in files} == {p.name: 0o640 for p in files}


@root_only
def test_init_with_a_group_gives_setgid_folder_and_group_rw_databases(env):
    env.write_config(f"[store]\ngroup = {GROUP}\n")
    r = rpo_guard(env, "init")
    assert r.returncode == 0 and r.stderr == ""
    assert mode(env.data) == 0o2770 and group_of(env.data) == GROUP
    for p in db_files(env):
        assert (p.name, mode(p), group_of(p)) == (p.name, 0o660, GROUP)
    env.consult([("3331234567", "no")])
    st = rpo_guard(env, "status", "--json")
    assert json.loads(st.stdout)["permissions"] == [] and st.returncode == 0


@root_only
def test_the_agi_creates_a_missing_audit_db_with_mode_and_group(env):
    env.write_config(f"[store]\ngroup = {GROUP}\nfile_mode = 0600\n")
    assert rpo_guard(env, "init").returncode == 0
    os.remove(env.cfg.audit_db)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(env.cfg.audit_db + suffix):
            os.remove(env.cfg.audit_db + suffix)
    env.consult([("3331234567", "no")])
    s = run_process_agi(agi_path(), ["3331234567", "B"], Channel(extension="3331234567"), env=env.agi_env)
    assert (s.result, s.reason) == ("ALLOW", "not_registered")
    assert (mode(env.cfg.audit_db), group_of(env.cfg.audit_db)) == (0o660, GROUP)


def test_status_warns_about_loose_permissions_without_changing_the_exit(env):
    assert rpo_guard(env, "init").returncode == 0
    env.consult([("3331234567", "no")])
    assert json.loads(rpo_guard(env, "status", "--json").stdout)["permissions"] == []
    os.chmod(env.cfg.register_db, 0o644)
    os.chmod(env.cfg.audit_db, 0o660)
    st = rpo_guard(env, "status", "--json")
    rep = json.loads(st.stdout)
    assert st.returncode == 0 and rep["exit"] == 0
    # (status's own read connection may create rpo.db-wal/-shm: SQLite gives them rpo.db's mode)
    main = [w for w in rep["permissions"] if "-wal:" not in w and "-shm:" not in w]
    assert main == [f"{env.cfg.register_db}: world-readable (0644)",
                    f"{env.cfg.audit_db}: file mode 0660 is looser than 0640 (extra bits 0020)"]
    assert all(w.endswith("world-readable (0644)") for w in rep["permissions"] if w not in main)
    text = rpo_guard(env, "status")
    assert text.returncode == 0 and f"permissions: {env.cfg.register_db}: world-readable (0644)" in text.stdout


@pytest.mark.parametrize("what", ["register", "audit", "folder"])
def test_world_writable_is_critical(env, what):
    assert rpo_guard(env, "init").returncode == 0
    env.consult([("3331234567", "no")])
    target = {"register": env.cfg.register_db, "audit": env.cfg.audit_db, "folder": str(env.data)}[what]
    os.chmod(target, 0o777 if what == "folder" else 0o646)
    st = rpo_guard(env, "status", "--json")
    rep = json.loads(st.stdout)
    assert st.returncode == 2 and rep["nothing_valid"] == [] and rep["schema_problem"] == ""
    assert any(w.startswith(f"{target}: world-writable") for w in rep["permissions"])
    assert "CRITICAL" in rpo_guard(env, "status").stdout


@root_only
def test_status_warns_when_the_group_does_not_match(env):
    assert rpo_guard(env, "init").returncode == 0  # created without a group
    env.consult([("3331234567", "no")])
    env.write_config(f"[store]\ngroup = {GROUP}\n")
    rep = json.loads(rpo_guard(env, "status", "--json").stdout)
    assert rep["exit"] == 0
    assert f"{env.cfg.register_db}: group is {group_of(env.cfg.register_db)}, [store] group is {GROUP}" \
        in rep["permissions"]
    assert f"{env.data}: group is {group_of(env.data)}, [store] group is {GROUP}" in rep["permissions"]


def test_init_reports_an_existing_world_writable_folder(env):
    env.data.mkdir()
    os.chmod(env.data, 0o777)
    r = rpo_guard(env, "init")
    assert r.returncode == 0
    assert f"warning: {env.data}: world-writable (0777)" in r.stderr
    assert mode(env.data) == 0o777  # an existing folder is reported, not silently changed


def test_group_setting_is_validated(env):
    env.write_config("[store]\ngroup = bad group!\n")
    with pytest.raises(config_mod.ConfigError, match=r"\[store\] group"):
        config_mod.load(str(env.conf))
    env.write_config("[store]\ngroup = no_such_group_here\n")
    r = rpo_guard(env, "init")
    assert r.returncode == 1 and "no such group" in r.stderr and "Traceback" not in r.stderr


SYSTEM_PY = "/usr/bin/python3"
READER = ("import sqlite3, sys; c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True); "
          "print(c.execute('SELECT COUNT(*) FROM batches').fetchone()[0])")  # as rpo_guard.register.store opens it
WRITER = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
          "c.execute(\"INSERT INTO holiday_years (year, source) VALUES (1990, 'w')\"); c.commit(); print('ok')")


def as_account(uid: int, gid: int, groups: list[int], code: str, db: str):
    """Run stdlib-only Python as another account (the venv may not be readable by it)."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}",
                           "--groups=" + ",".join(map(str, groups)), "--", SYSTEM_PY, "-c", code, db],
                          capture_output=True, text=True, timeout=60)


@root_only
@pytest.mark.skipif(not (os.access(SYSTEM_PY, os.X_OK) and shutil.which("setpriv")), reason="needs setpriv and "
                    "/usr/bin/python3")
@pytest.mark.parametrize("file_mode,writer_ok", [("0640", False), ("0640 + group", True)])
def test_two_accounts_need_the_group_write_bit(file_mode, writer_ok):
    """Why a group makes the databases group-writable: the AGI account (a read-only
    WAL reader) creates rpo.db-wal/-shm with rpo.db's mode when no connection holds
    them; the sync account must then write them. nobody = AGI, daemon = sync account."""
    from rpo_guard.register.schema import open_db
    nobody, daemon = 65534, 1
    gid = grp.getgrnam(GROUP).gr_gid
    import tempfile
    top = Path(tempfile.mkdtemp(prefix="rpo-perms-", dir="/tmp"))  # pytest's tmp_path is under a 0700 folder
    top.chmod(0o755)
    try:
        _two_accounts(top / "data", file_mode, writer_ok, nobody, daemon, gid, open_db)
    finally:
        shutil.rmtree(top)


def _two_accounts(data, file_mode, writer_ok, nobody, daemon, gid, open_db):
    if file_mode == "0640":  # the group set by hand, databases left 0640
        open_db(data / "rpo.db", 0o640).close()
        os.chown(data, -1, gid)
        os.chmod(data, 0o2770)
        os.chown(data / "rpo.db", daemon, gid)
    else:
        open_db(data / "rpo.db", 0o640, GROUP).close()
        os.chown(data / "rpo.db", daemon, gid)
    os.chown(data, daemon, -1)
    assert not (data / "rpo.db-shm").exists()
    r = as_account(nobody, gid, [gid], READER, str(data / "rpo.db"))
    assert r.returncode == 0 and r.stdout.strip() == "0", r.stderr
    assert (data / "rpo.db-shm").exists() and os.stat(data / "rpo.db-shm").st_uid == nobody
    w = as_account(daemon, daemon, [daemon, gid], WRITER, str(data / "rpo.db"))
    if writer_ok:
        assert w.returncode == 0 and w.stdout.strip() == "ok", w.stderr
    else:
        assert w.returncode != 0 and "readonly database" in w.stderr
