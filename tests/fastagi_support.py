"""Helpers for the FastAGI tests: a real `rpo-guard serve` process on loopback."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def rpo_guard_bin() -> str:
    here = Path(sys.executable).parent / "rpo-guard"
    if not here.exists():
        pytest.fail("rpo-guard is not installed (run ./dev test, which installs the project)")
    return str(here)


class Server:
    """`rpo-guard serve --listen 127.0.0.1:0` as a subprocess; .port once it listens."""

    def __init__(self, conf: Path):
        env = dict(os.environ)
        env["RPO_GUARD_CONFIG"] = str(conf)
        self.proc = subprocess.Popen([rpo_guard_bin(), "serve", "--listen", "127.0.0.1:0"], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.err = b""
        self.port = None
        end = time.monotonic() + 30
        while self.port is None:
            if time.monotonic() > end or self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"rpo-guard serve did not start: {self.err.decode(errors='replace')}")
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                self.err += chunk
                for line in self.err.decode(errors="replace").splitlines():
                    if "listening on 127.0.0.1:" in line:
                        self.port = int(line.split("127.0.0.1:")[1].split()[0])

    def send(self, sig) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.err += err or b""
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")
