"""A throwaway PostgreSQL cluster in a temporary folder, unix socket only: for the tests,
bench/fleet.py and trying fleet mode on one machine. Not used by a deployed fleet.

The Debian server refuses to run as root, so as root the cluster belongs to the
``postgres`` user (initdb and pg_ctl run as that user); otherwise to the current user.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time


def find_bindir() -> str | None:
    """The folder of initdb/pg_ctl: $PG_BINDIR, PATH, or the newest /usr/lib/postgresql/*/bin."""
    for candidate in [os.environ.get("PG_BINDIR", "")] + [os.path.dirname(shutil.which("initdb") or "")] + \
            sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if candidate and os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return candidate
    return None


class Cluster:
    def __init__(self, bindir: str, fsync: bool = False):
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="rpo-guard-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "postgres.log")
        self.user = None
        if os.geteuid() == 0:
            import pwd
            self.user = "postgres"
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chmod(self.root, 0o755)
        self.fsync = fsync
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--locale=C", "-E", "UTF8", "-N")
        self.counter = 0

    def _run(self, tool, *args, check=True):
        cmd = [os.path.join(self.bindir, tool), *args]
        return subprocess.run(cmd, user=self.user, check=check, capture_output=True, text=True, cwd=self.root)

    def start(self) -> None:
        opts = (f"-c listen_addresses='' -c unix_socket_directories='{self.root}' -c fsync={'on' if self.fsync else 'off'}"
                " -c synchronous_commit=on -c max_connections=200 -c full_page_writes=off")
        r = self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w", "-t", "60", "start", check=False)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stdout}{r.stderr}\n{self.tail()}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False)

    def tail(self) -> str:
        try:
            with open(self.log) as fh:
                return fh.read()[-2000:]
        except OSError:
            return ""

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.root} user=postgres dbname={dbname}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh database with the central schema; its conninfo."""
        import psycopg

        from .schema import migrate
        self.counter += 1
        name = f"{prefix}{os.getpid()}_{self.counter}"
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        info = self.conninfo(name)
        with psycopg.connect(info) as conn:
            migrate(conn)
        return info

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for(predicate, timeout: float = 30.0, every: float = 0.02, what: str = "condition"):
    """Poll until ``predicate()`` is true (a generous bound: never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)

