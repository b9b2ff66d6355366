"""Checkpoints of audit.db's WAL, from a thread of their own, so the event loop never fsyncs."""
from __future__ import annotations

import os
import threading
from contextlib import suppress

from rpo_guard.failure_log import log_failure

CHECKPOINT_EVERY = 1.0
RETRY = 0.001  # the loop's timers have millisecond resolution (uvloop: a shorter delay is 0)
# The checkpoint thread's nice value, above the loop's: its copying can wait a little, the
# calls cannot (p99 at 1,000 calls/s with a 1,000,000-row log: 1.0-1.7 ms against 1.6-2.2 at
# the loop's own priority, bench/fastagi_load.py). Raising one's own nice needs no privilege;
# the pass that holds off the commits is short (~0.2 ms median, a few ms at most) either way.
CHECKPOINT_NICE = 10


class Checkpointer:
    """Checkpoints audit.db's WAL from a thread of its own.

    The writer connection's automatic checkpoints are turned off
    (``wal_autocheckpoint = 0``) once this thread runs; every
    CHECKPOINT_EVERY seconds it runs a PASSIVE checkpoint on a connection of
    its own (it never blocks a writer or a reader; SQLite releases the GIL
    while it copies and syncs), opened anew when audit.db is another file.

    The WAL starts over from its beginning only when a commit finds every
    frame already copied back. Under steady load some commit always lands
    while a checkpoint runs, so a checkpoint alone would leave the WAL
    growing for as long as the calls keep coming (200 MB in 10 s at one call
    at a time, each commit extending the file). So each run is two passes:
    the bulk with the writer going on, then the few frames committed
    meanwhile while holding ``lock``, which the writer takes for each commit.
    Still holding it, the thread writes once (user_version, unchanged): that
    write starts the WAL over and syncs its new header, an fsync the loop's
    next commit would otherwise make (measured: the loop thread blocked in
    fdatasync once per checkpoint).

    SQLite syncs audit.db only at the end of a pass that leaves no frame
    behind, i.e. in the pass that holds off the commits, and that sync then
    had to write every page the bulk pass had copied (with a large log those
    are scattered index pages: 15 ms and more with 1,000,000 rows, and every
    call arriving meanwhile waited). So between the two passes the thread
    syncs audit.db itself, through a descriptor of its own: the last pass's
    sync is left only its own few pages. That descriptor is never closed
    while the server's SQLite connections are open (closing any descriptor
    of a file drops every POSIX lock the process holds on it, SQLite's
    included): one per file audit.db has been, closed by :meth:`release`
    after the writer's connection.

    If a checkpoint fails, the writer turns its automatic checkpoints back on
    at its next commit (logged once), so the WAL never grows without bound.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed = ""
        self.runs = 0
        self._writer = None
        self._handed_back = False
        self.lock = threading.Lock()
        self._conn = None  # the thread's connection (see _connection)
        self._ident = None
        self._fds: dict = {}  # (st_dev, st_ino) -> a read-only descriptor, for the sync (see above)

    def take_over(self, writer) -> None:
        """Called (in the loop thread) before each commit of the writer connection."""
        if writer is self._writer:
            if self.failed and not self._handed_back:
                writer.execute("PRAGMA wal_autocheckpoint = 1000")  # SQLite's default
                self._handed_back = True
            return
        self._writer, self._handed_back = writer, False
        if self.failed:
            return  # a new connection keeps its automatic checkpoints
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rpo-guard-checkpoint", daemon=True)
            self._thread.start()

    def checkpoint(self) -> None:
        conn = self._connection()
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # the bulk, commits going on
            _sync(self._fds[self._ident])  # its pages, written now rather than under the lock
            with self.lock:  # the rest, with no commit landing
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                # The first write after it starts the WAL over and syncs the new header:
                # made here (rewriting user_version as it is), that fsync is not the loop's.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    conn.execute(f"PRAGMA user_version = {int(version)}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except BaseException:
            self._close()
            raise
        self.runs += 1

    def _connection(self):
        """The thread's own connection to audit.db, kept between runs (a connection
        opened for each run was seen never to start the WAL over after the first
        time) and opened anew when the file is another one (moved, restored)."""
        import sqlite3
        path = self.cfg.audit_db
        st = os.stat(path)
        if self._conn is not None and self._ident == (st.st_dev, st.st_ino):
            return self._conn
        self._close()
        conn = sqlite3.connect(path, timeout=self.cfg.audit_busy_timeout_ms / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA synchronous = {self.cfg.synchronous}")
        self._conn, self._ident = conn, (st.st_dev, st.st_ino)
        if self._ident not in self._fds:
            self._fds[self._ident] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return conn

    def _close(self) -> None:
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
            self._conn = None

    def _run(self) -> None:
        with suppress(OSError, AttributeError):  # Linux: a thread's own nice value, by its id
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, 0) + CHECKPOINT_NICE)
        while not self._stop.wait(CHECKPOINT_EVERY):
            try:
                self.checkpoint()
            except Exception as exc:
                self.failed = f"{type(exc).__name__}: {exc}"
                log_failure(f"audit log checkpoint failed ({self.failed}); the writer checkpoints by itself "
                            "from now on", self.cfg.log_file)
                return

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if not self.failed:
            with suppress(Exception):
                self.checkpoint()
        self._close()

    def release(self) -> None:
        """Close the sync descriptors: only once no connection of this process has audit.db open."""
        for fd in self._fds.values():
            with suppress(OSError):
                os.close(fd)
        self._fds.clear()


_sync = getattr(os, "fdatasync", os.fsync)

