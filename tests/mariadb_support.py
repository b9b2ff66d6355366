"""A throwaway MariaDB server for the VICIdial tests: a temp folder, a unix socket, no TCP port.

Skipped with the reason when mariadbd is not installed, unless RPO_REQUIRE_MARIADB=1
(set by .ci/run): then its absence fails the tests.
"""
from __future__ import annotations

import getpass
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SCHEMA = Path(__file__).resolve().parent / "data" / "vicidial_tables.sql"
MARIADBD = ("/usr/sbin/mariadbd", "/usr/sbin/mysqld", "/usr/libexec/mariadbd")


def _missing(reason: str):
    if os.environ.get("RPO_REQUIRE_MARIADB") == "1":
        pytest.fail(f"{reason} (RPO_REQUIRE_MARIADB=1: CI must have MariaDB)")
    pytest.skip(reason)


class MariaDB:
    """One server; :meth:`database` gives each test its own database with VICIdial's tables."""

    _names = itertools.count(1)

    def __init__(self, root: Path, server: str, install: str, client: str):
        self.root, self.sock, self.client = root, root / "sock", client
        user = "root" if os.geteuid() == 0 else None
        # with socket authentication the administrator is the OS user running the server
        self.admin = "root" if user else getpass.getuser()
        data = root / "data"
        args = [install, "--no-defaults", f"--datadir={data}", "--skip-test-db",
                "--auth-root-authentication-method=socket"] + ([f"--user={user}"] if user else [])
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"mariadb-install-db failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        self.proc = subprocess.Popen(
            [server, "--no-defaults", f"--datadir={data}", f"--socket={self.sock}", "--skip-networking",
             f"--pid-file={root / 'pid'}", f"--log-error={root / 'error.log'}", "--skip-log-bin",
             "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M", "--performance-schema=off"]
            + ([f"--user={user}"] if user else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (root / "error.log").read_text(errors="replace")[-3000:] if (root / "error.log").exists() else ""
                self.stop()
                raise RuntimeError(f"mariadbd did not start: {log}")
            time.sleep(0.1)
        self.sql("CREATE USER 'cron'@'localhost' IDENTIFIED BY 'test-1234'")
        self.password_file = root / "password"
        self.password_file.write_text("test-1234\n")

    def sql(self, statements: str, database: str | None = None) -> str:
        args = [self.client, "--no-defaults", f"--socket={self.sock}", "-u", self.admin, "-N", "-B"]
        out = subprocess.run(args + ([database] if database else []), input=statements, capture_output=True,
                             text=True, timeout=60)
        if out.returncode:
            raise RuntimeError(f"mariadb: {out.stderr}")
        return out.stdout

    def database(self) -> str:
        name = f"asterisk{next(self._names)}"
        self.sql(f"CREATE DATABASE {name}; GRANT ALL ON {name}.* TO 'cron'@'localhost';")
        self.sql(SCHEMA.read_text(), name)
        return name

    def connect(self, database: str):
        import pymysql
        return pymysql.connect(unix_socket=str(self.sock), user="cron", password="test-1234", database=database,
                               autocommit=True)

    def config(self, database: str, campaign_brands: str = "") -> str:
        return (f"[vicidial]\nsocket = {self.sock}\nuser = cron\npassword_file = {self.password_file}\n"
                f"database = {database}\ncampaign_brands = {campaign_brands}\n")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def mariadb():
    server = next((p for p in MARIADBD if os.path.exists(p)), None)
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    client = shutil.which("mariadb") or shutil.which("mysql")
    if not (server and install and client):
        _missing("MariaDB is not installed (mariadbd, mariadb-install-db, mariadb): apt-get install mariadb-server")
    try:
        import pymysql  # noqa: F401
    except ImportError:
        _missing("PyMySQL is not installed (pip install -e '.[test]')")
    root = Path(tempfile.mkdtemp(prefix="rpo-mariadb-"))
    try:
        server_ = MariaDB(root, server, install, client)
    except RuntimeError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(str(exc))
    yield server_
    server_.stop()
    shutil.rmtree(root, ignore_errors=True)
