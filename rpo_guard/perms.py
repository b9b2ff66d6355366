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

* A database created by root (``sudo rpo-guard init``, an import run as root)
  is given to the owner of the folder it is created in, so that a tool run
  as root never leaves files the data's account cannot use.
* :func:`access_problems` says what another account (Asterisk's user) cannot
  do with the data: read the register, append to the audit log. `init`
  prints it.

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
        os.fchown(fd, _owner_for(path), gid_of(group) if group else -1)
        os.fchmod(fd, db_mode(file_mode, group))  # after fchown: chown clears setgid bits
    finally:
        os.close(fd)
    return True


def _owner_for(path: str) -> int:
    """-1 (keep), or for root the owner of the folder the file is created in."""
    if os.geteuid() != 0:
        return -1
    try:
        return os.stat(os.path.dirname(os.path.abspath(path))).st_uid
    except OSError:
        return -1


def fix_companions(path: str, file_mode: int, group: str = "") -> None:
    """Give the -wal and -shm beside ``path`` (when present) the database's group and mode."""
    for suffix in ("-wal", "-shm"):
        p = path + suffix
        try:
            os.chown(p, _owner_for(p), gid_of(group) if group else -1)
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


def _may(st: os.stat_result, uid: int, gids: set[int], want: int) -> bool:
    """Whether an account (uid, groups) has the ``want`` bits (4 r, 2 w, 1 x) on a file, as the
    kernel decides from owner, group and mode (no ACLs; root may do anything)."""
    if uid == 0:
        return True
    shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
    return (st.st_mode >> shift) & want == want


def _describe(p: str, st: os.stat_result) -> str:
    import pwd
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    return f"{p} is {owner}:{_group_name(st.st_gid)} {_mode_text(st.st_mode)}"


def access_problems(user: str, data_dir: str, register_db: str, audit_db: str) -> list[str]:
    """What ``user`` (Asterisk's account, running the AGI) cannot do with the data: reach the
    folder, read the register, append to the audit log (each SQLite file in WAL mode also
    needs its -wal/-shm: writable when they exist, else a folder it may create them in).
    Empty when it can do all. KeyError when there is no such user."""
    import pwd
    pw = pwd.getpwnam(user)
    uid, gids = pw.pw_uid, set(os.getgrouplist(user, pw.pw_gid))
    problems: list[str] = []
    folder = os.path.abspath(data_dir)
    parts = folder.split(os.sep)
    for i in range(1, len(parts)):
        d = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(d)
        except OSError:
            continue
        if not _may(st, uid, gids, 1):
            return [f"{user} cannot reach {folder}: {_describe(d, st)} (no search permission)"]
    try:
        fst = os.stat(folder)
    except OSError as exc:
        return [f"{folder}: {exc.strerror}"]
    if not _may(fst, uid, gids, 5):
        return [f"{user} cannot enter {folder}: {_describe(folder, fst)}"]
    folder_writable = _may(fst, uid, gids, 3)
    for db, want, what in ((register_db, 4, "read the register"), (audit_db, 6, "append to the audit log")):
        try:
            st = os.stat(db)
        except FileNotFoundError:
            if not folder_writable:
                problems.append(f"{user} cannot create {db}: {_describe(folder, fst)}")
            continue
        if not _may(st, uid, gids, want):
            problems.append(f"{user} cannot {what}: {_describe(db, st)}")
            continue
        for suffix in ("-wal", "-shm"):
            try:
                cst = os.stat(db + suffix)
            except FileNotFoundError:
                if not folder_writable:
                    problems.append(f"{user} cannot {what}: {db + suffix} is missing and "
                                    f"{_describe(folder, fst)} does not let it create it")
                continue
            if not _may(cst, uid, gids, 6):
                problems.append(f"{user} cannot {what}: {_describe(db + suffix, cst)}")
    return problems


def access_denied(path: str, write: bool = False) -> str | None:
    """Why this process cannot use the database ``path`` (read, or with ``write`` append),
    as "permission denied: ..." naming the folder or file in the way with its owner, group
    and mode; None when permissions are not the problem (a missing file is not one)."""
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts)):
        d = os.sep.join(parts[:i])
        if not os.access(d, os.X_OK):
            return f"permission denied: {_denied_at(d)} (cannot reach {path})"
    folder = os.path.dirname(path)
    try:
        os.stat(path)
    except FileNotFoundError:
        if write and not os.access(folder, os.W_OK | os.X_OK):
            return f"permission denied: {_denied_at(folder)} (cannot create {os.path.basename(path)})"
        return None
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not os.access(path, os.R_OK | (os.W_OK if write else 0)):
        return f"permission denied: {_denied_at(path)} ({'cannot write it' if write else 'cannot read it'})"
    for suffix in ("-wal", "-shm"):
        p = path + suffix
        if os.path.exists(p):
            if not os.access(p, os.R_OK | os.W_OK):
                return f"permission denied: {_denied_at(p)}"
        elif not os.access(folder, os.W_OK | os.X_OK):
            return (f"permission denied: {_denied_at(folder)} (cannot create {os.path.basename(p)}, "
                    "which SQLite needs beside a WAL database)")
    return None


def _denied_at(p: str) -> str:
    try:
        st = os.stat(p)
    except OSError:
        return p
    import pwd
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = str(os.geteuid())
    return f"{_describe(p, st)}, this process runs as {me}"
