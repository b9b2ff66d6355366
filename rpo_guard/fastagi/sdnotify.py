"""systemd's notify protocol (sd_notify) in pure Python: READY, WATCHDOG, STOPPING.

Under a ``Type=notify`` unit systemd passes ``$NOTIFY_SOCKET``, an AF_UNIX datagram socket
(a path, or an abstract name written with a leading ``@``), and with ``WatchdogSec=`` also
``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, the process it expects the pings from). The
server sends ``READY=1`` once it listens, ``WATCHDOG=1`` every third of the watchdog
period from a timer of its event loop — so a loop that is stuck stops the pings, systemd
kills the server and restarts it (``Restart=``), Asterisk sees its connections close and
the dialplan refuses those calls — and ``STOPPING=1`` when it drains. Without
``$NOTIFY_SOCKET`` every call is a no-op. A send never blocks and never raises.
"""
from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if raw.startswith("@"):
            self.address = "\0" + raw[1:]
        elif raw.startswith("/"):
            self.address = raw
        self.watchdog_period: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if self.address and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_period = int(usec) / 1_000_000
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def ping_every(self) -> float | None:
        """How often to send WATCHDOG=1: a third of the period systemd waits."""
        return self.watchdog_period / 3 if self.watchdog_period else None

    def notify(self, state: str) -> bool:
        """Send one state message (``KEY=VALUE`` lines); whether it was sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(state.encode("utf-8", "replace"), self.address)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
