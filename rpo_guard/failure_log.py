"""Where failures go: stderr is lost under Asterisk, so a file or syslog.

Lines are stamped in the rules' timezone (Europe/Rome by default), as the audit log is.
A failure log the tool creates is 0640 (it holds phone numbers), or 0660 in a setgid
folder (the installed /var/log/rpo-guard, shared by the rpo-guard account and Asterisk's
user through their group). Only failures pay for the imports below.
"""
from __future__ import annotations

import os


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


def log_failure(message: str, log_file: str | None = None, tz: str = "Europe/Rome") -> None:
    """Record one failure line; never raises. ``tz``: [rules] timezone."""
    try:
        line = f"{_stamp(tz)} rpo-guard[{os.getpid()}]: {message}".replace("\n", " ")
        if log_file:
            fd = _open_append(log_file)
            try:
                os.write(fd, (line + "\n").encode("utf-8", "replace"))
            finally:
                os.close(fd)
            return
        import syslog
        syslog.openlog("rpo-guard", syslog.LOG_PID, syslog.LOG_USER)
        syslog.syslog(syslog.LOG_ERR, message.replace("\n", " "))
    except Exception:
        pass
