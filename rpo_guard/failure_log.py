"""Where failures go: stderr is lost under Asterisk, so a file or syslog."""
from __future__ import annotations

import os
import time


def log_failure(message: str, log_file: str | None = None) -> None:
    """Record one failure line; never raises."""
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} rpo-guard[{os.getpid()}]: {message}".replace("\n", " ")
    try:
        if log_file:
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
            return
        import syslog
        syslog.openlog("rpo-guard", syslog.LOG_PID, syslog.LOG_USER)
        syslog.syslog(syslog.LOG_ERR, message.replace("\n", " "))
    except Exception:
        pass
