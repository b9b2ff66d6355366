"""Permissions of the data folder and the databases: applied on creation, checked by `status`.

Rules (``[store] file_mode`` and ``[store] group``):

* A database the tool creates (rpo.db, audit.db, and their ``-wal``/``-shm``
  when the tool's own connection creates them) gets ``file_mode`` (default
  0640); with a ``group`` it is chowned to that group and the group gets
  read *and write* (0660 with the default mode). Why write: the group is
  Asterisk's; its AGI appends to audit.db, and a read-only WAL reader of
  rpo.db creates ``rpo.db-wal``/``-shm`` itself, with rpo.db's mode, when no
  other connection holds them; the sync account must then be able to write
  them or every import fails ("attempt to write a readonly database").
  ``tests/register/test_perms.py`` shows both with two real accounts.
* The data folder the tool creates is 0750 without a group (one account runs
  both the AGI and the tool) and 2770 with one: group-writable so the AGI can
  create audit.db and the WAL files, setgid so whatever is created inside
  gets the group. Never world-writable, never world-readable.

Only :func:`create_file` may run on the per-call path (the AGI creates a
missing audit.db); ``grp`` is imported only when a group is set.
"""
from __future__ import annotations

import os
import stat

DIR_MODE = 0o750
GROUP_DIR_MODE = 0o2770


class PermissionProblem(Exception):
    pass


def gid_of(group: str) -> int:
    """The numeric id of a group name (or a number); PermissionProblem if unknown."""
    import grp
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise PermissionProblem(f"[store] group {group!r}: no such group on this machine") from None


def db_mode(file_mode: int, group: str) -> int:
    """The mode a database gets: file_mode, plus group read and write when a group is set."""
    return (file_mode | 0o060) if group else file_mode


def dir_mode(group: str) -> int:
    return GROUP_DIR_MODE if group else DIR_MODE


def create_file(path: str, file_mode: int, group: str = "") -> bool:
    """Create ``path`` empty with its final mode and group before anything is written
    to it (no moment with the umask's looser mode). False if it already existed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        if group:
            os.fchown(fd, -1, gid_of(group))
        os.fchmod(fd, db_mode(file_mode, group))  # after fchown: chown clears setgid bits
    finally:
        os.close(fd)
    return True


def fix_companions(path: str, file_mode: int, group: str = "") -> None:
    """Give the -wal and -shm beside ``path`` (when present) the database's group and mode."""
    for suffix in ("-wal", "-shm"):
        p = path + suffix
        try:
            if group:
                os.chown(p, -1, gid_of(group))
            os.chmod(p, db_mode(file_mode, group))
        except FileNotFoundError:
            pass


def make_data_dir(path: str, group: str = "") -> bool:
    """Create the data folder (and missing parents) with the safe mode and group.
    False if it already existed (then it is left alone: `status` reports problems)."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return False
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return False
    if group:
        os.chown(path, -1, gid_of(group))
    os.chmod(path, dir_mode(group))
    return True


def _mode_text(m: int) -> str:
    return f"{stat.S_IMODE(m):04o}"


def check(data_dir: str, files: list[str], file_mode: int, group: str) -> list[str]:
    """Warnings about the data folder and the database files (with their -wal/-shm).

    A folder or file is reported when it is world-writable, world-readable,
    has permission bits beyond what the settings give, or (with ``group``)
    belongs to another group. A missing file is not reported here.
    """
    warnings: list[str] = []
    gid = None
    if group:
        try:
            gid = gid_of(group)
        except PermissionProblem as exc:
            warnings.append(str(exc))

    def one(p: str, allowed: int, kind: str) -> None:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            return
        except OSError as exc:
            warnings.append(f"{p}: cannot stat: {exc.strerror}")
            return
        m = stat.S_IMODE(st.st_mode)
        if m & 0o002:
            warnings.append(f"{p}: world-writable ({_mode_text(m)}): anyone on the machine can change it")
        elif m & 0o004:
            warnings.append(f"{p}: world-readable ({_mode_text(m)})")
        extra = m & ~allowed & 0o7777 & ~0o006
        if extra:
            warnings.append(f"{p}: {kind} mode {_mode_text(m)} is looser than {_mode_text(allowed)} "
                            f"(extra bits {_mode_text(extra)})")
        if gid is not None and st.st_gid != gid:
            warnings.append(f"{p}: group is {_group_name(st.st_gid)}, [store] group is {group}")

    one(data_dir, dir_mode(group), "folder")
    allowed = db_mode(file_mode, group)
    for f in files:
        for p in (f, f + "-wal", f + "-shm"):
            one(p, allowed, "file")
    return warnings


def _group_name(gid: int) -> str:
    import grp
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def world_writable(warnings: list[str]) -> bool:
    return any(": world-writable (" in w for w in warnings)
