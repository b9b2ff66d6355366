"""Where failures go, so that an admin always finds them.

With ``[paths] log_file`` set (and writable): that file only. Otherwise (no configuration
yet, or the file cannot be written): syslog when there is one (/dev/log), and always the
fallback file FALLBACK_PATH (``$RPO_GUARD_FAILURE_LOG`` overrides it; written when its
folder exists and can be written) and stderr (the journal under systemd; Asterisk's own
stderr for a process AGI). The process AGI also sends the configuration failures to
Asterisk's log while the AGI stream works (rpo_guard.agi).
"""
from __future__ import annotations

import os
import sys
import time

FALLBACK_PATH = "/var/log/rpo-guard/failures.log"


def fallback_path() -> str:
    return os.environ.get("RPO_GUARD_FAILURE_LOG") or FALLBACK_PATH


def _append(path: str, line: str) -> bool:
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        return True
    except OSError:
        return False


def log_failure(message: str, log_file: str | None = None) -> list[str]:
    """Record one failure line; never raises. Returns where it went (paths, ``syslog``,
    ``stderr``)."""
    message = message.replace("\n", " ")
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} rpo-guard[{os.getpid()}]: {message}"
    where: list[str] = []
    try:
        if log_file and _append(log_file, line):
            return [log_file]
        if os.path.exists("/dev/log"):
            import syslog
            syslog.openlog("rpo-guard", syslog.LOG_PID, syslog.LOG_USER)
            syslog.syslog(syslog.LOG_ERR, message)
            where.append("syslog")
        path = fallback_path()
        if _append(path, line):
            where.append(path)
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
            where.append("stderr")
        except Exception:
            pass
    except Exception:
        pass
    return where
