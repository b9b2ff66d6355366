"""systemd's notify protocol, against a real AF_UNIX datagram socket: READY once the server
listens, WATCHDOG from the event loop (a loop blocked on purpose sends none), STOPPING on
SIGTERM. The shipped unit (systemd/rpo-guard-fastagi.service) restarts a server whose pings
stop, so a hung server cannot hold calls for long."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from fastagi_support import rpo_guard_bin


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; datagrams read in a thread."""

    def __init__(self, path: Path | None = None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"rpo-guard-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name  # abstract namespace, as systemd writes it
        else:
            self.sock.bind(str(path))
            self.env_value = str(path)
        self.received: list[tuple[float, str]] = []
        self.sock.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def wait_for(self, text: str, count: int = 1, timeout: float = 30) -> list[tuple[float, str]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            hits = [r for r in self.received if text in r[1]]
            if len(hits) >= count:
                return hits
            time.sleep(0.02)
        raise AssertionError(f"{count} x {text!r} not received; got {self.received}")

    def close(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.mark.parametrize("where", ["abstract", "path"])
def test_ready_watchdog_stopping_over_a_real_socket(env, tmp_path, where):
    env.init()
    notify = NotifySocket(None if where == "abstract" else tmp_path / "notify.sock")
    proc = subprocess.Popen([rpo_guard_bin(), "serve", "--listen", "127.0.0.1:0"],
                            env=dict(os.environ, RPO_GUARD_CONFIG=str(env.conf), NOTIFY_SOCKET=notify.env_value,
                                     WATCHDOG_USEC="600000"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = notify.wait_for("READY=1")
        assert f"MAINPID={proc.pid}" in ready[0][1]
        pings = notify.wait_for("WATCHDOG=1", count=3)
        assert all(p[0] > ready[0][0] for p in pings)
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        notify.close()


def test_no_notify_socket_no_message(monkeypatch):
    from rpo_guard.fastagi.sdnotify import Notifier
    n = Notifier({})
    assert not n.enabled and n.notify("READY=1") is False and n.ping_every is None
    n = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.enabled and n.ping_every is None  # the pings are expected from another process
    n = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.ping_every == 1.0


def test_a_blocked_event_loop_sends_no_pings(env, monkeypatch):
    """The loop is blocked on purpose for a while: no WATCHDOG=1 arrives meanwhile (systemd
    would kill and restart the server); once it runs again, the pings come back."""
    from rpo_guard.fastagi.server import serve
    env.init()
    notify = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", notify.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "300000")  # a ping every 0.1 s
    started = {}
    ready = threading.Event()

    def run():
        async def main():
            started["loop"] = asyncio.get_running_loop()
            await serve(env.cfg, ("127.0.0.1", 0), ready=lambda s: (started.update(server=s), ready.set()),
                        install_signals=False)
        asyncio.run(main())
    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert ready.wait(30)
        notify.wait_for("WATCHDOG=1", count=3)
        block = []

        def stuck():
            block.append(time.monotonic())
            time.sleep(1.5)  # what a lookup stuck in the loop thread would do
            block.append(time.monotonic())
        started["loop"].call_soon_threadsafe(stuck)
        end = time.monotonic() + 10
        while len(block) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(block) == 2
        during = [r for r in notify.received if "WATCHDOG=1" in r[1] and block[0] + 0.05 < r[0] < block[1]]
        assert during == []

        def after():
            return [r for r in notify.received if "WATCHDOG=1" in r[1] and r[0] > block[1]]
        end = time.monotonic() + 10
        while len(after()) < 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(after()) >= 2  # the loop runs again: so do the pings
    finally:
        if "server" in started:
            started["loop"].call_soon_threadsafe(started["server"].request_stop)
        t.join(30)
        notify.close()


def test_shipped_unit_uses_the_watchdog():
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "rpo-guard-fastagi.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["WatchdogSec"] and settings["Restart"] == "always"
