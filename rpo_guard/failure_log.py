"""Where failures go, so that an admin always finds them.

With ``[paths] log_file`` set (and writable): that file only. Otherwise (no configuration
yet, or the file cannot be written): syslog when there is one (/dev/log), and always the
fallback file FALLBACK_PATH (``$RPO_GUARD_FAILURE_LOG`` overrides it; written when its
folder exists and can be written) and stderr (the journal under systemd; Asterisk's own
stderr for a process AGI). The process AGI also sends the configuration failures to
Asterisk's log while the AGI stream works (rpo_guard.agi).

Lines are stamped in the rules' timezone (Europe/Rome by default), as the audit log is.
A failure log the tool creates is 0640 (it holds phone numbers), or 0660 in a setgid
folder (the installed /var/log/rpo-guard, shared by the rpo-guard account and Asterisk's
user through their group). Only failures pay for the imports below.
"""
from __future__ import annotations

import os
import sys

FALLBACK_PATH = "/var/log/rpo-guard/failures.log"
# The timezone of the stamps: [rules] timezone once a configuration is loaded (rpo_guard.config.load
# sets it), Europe/Rome before (the default of that setting).
_timezone = "Europe/Rome"


def use_timezone(tz: str) -> None:
    """Stamp the lines in ``tz`` from now on ([rules] timezone)."""
    global _timezone
    _timezone = tz


def fallback_path() -> str:
    return os.environ.get("RPO_GUARD_FAILURE_LOG") or FALLBACK_PATH


def _stamp(tz: str) -> str:
    from datetime import datetime
    try:
        from zoneinfo import ZoneInfo
        return datetime.now(ZoneInfo(tz)).strftime("%Y-%m-%dT%H:%M:%S%z")
    except Exception:  # an unknown zone must not lose the line
        return datetime.now().astimezone().strftime("%Y-%m-%dT%H:%M:%S%z")


def _open_append(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        pass
    shared = os.stat(os.path.dirname(os.path.abspath(path))).st_mode & 0o2000
    mode = 0o660 if shared else 0o640
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:  # another process made it meanwhile
        return os.open(path, os.O_WRONLY | os.O_APPEND)
    os.fchmod(fd, mode)  # whatever the umask
    return fd


def _append(path: str, line: str) -> bool:
    try:
        fd = _open_append(path)
        try:
            os.write(fd, (line + "\n").encode("utf-8", "replace"))
        finally:
            os.close(fd)
        return True
    except OSError:
        return False


def log_failure(message: str, log_file: str | None = None, tz: str | None = None) -> list[str]:
    """Record one failure line; never raises. ``tz``: the stamp's timezone (default: the
    loaded configuration's [rules] timezone). Returns where it went (paths, ``syslog``,
    ``stderr``)."""
    where: list[str] = []
    try:
        message = message.replace("\n", " ")
        line = f"{_stamp(tz or _timezone)} rpo-guard[{os.getpid()}]: {message}"
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
