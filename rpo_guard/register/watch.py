"""The watched inbox: `rpo-guard watch`.

A file is imported when it arrives by rename (moved-to) or is closed after
writing (inotify IN_CLOSE_WRITE), and at the rescan done at start and every
``rescan_seconds`` (inotify overflow, NFS with the polling observer). Then it
moves to ``done/`` or, rejected, to ``quarantine/`` with ``<name>.reason.txt``.

Every data file needs its manifest ``<file>.manifest.json`` (the date is never
assumed); a file still without one after ``manifest_wait_seconds`` is
quarantined. Temporary names are ignored: a leading ``.`` or ``~``, a trailing
``~``, ``.tmp``, ``.part``, ``.partial``, ``.swp``, ``.crdownload``,
``.filepart``, and the ``.reason.txt`` files. Sent lists named by a manifest
are left where they are. Imports run one at a time on one worker thread.
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Callable

from rpo_guard.register.sources import MANIFEST_SUFFIX, ImportFailed, read_manifest
from rpo_guard.sync import import_file, move_done, quarantine

TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".swp", ".crdownload", ".filepart", ".reason.txt", "~")


def is_temporary(name: str) -> bool:
    return name.startswith((".", "~")) or name.lower().endswith(TEMP_SUFFIXES)


class Inbox:
    def __init__(self, cfg, folder: Path | None = None, log: Callable[[str], None] = print, who: str = "watch"):
        self.cfg = cfg
        self.folder = Path(folder or cfg.inbox)
        self.done = self.folder / "done"
        self.quarantine = self.folder / "quarantine"
        self.log = log
        self.who = who
        self.queue: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        for d in (self.folder, self.done, self.quarantine):
            d.mkdir(parents=True, exist_ok=True)

    # -- what to do with one path
    def sent_lists(self) -> set[Path]:
        out = set()
        for m in self.folder.glob("*" + MANIFEST_SUFFIX):
            try:
                man = read_manifest(Path(str(m)[:-len(MANIFEST_SUFFIX)]))
            except ImportFailed:
                continue
            if man and man.get("sent"):
                out.add(Path(man["sent"]))
        return out

    def candidate(self, path: Path) -> Path | None:
        """The data file an event on ``path`` is about, or None to ignore it."""
        path = Path(path)
        if path.parent.resolve() != self.folder.resolve() or is_temporary(path.name):
            return None
        if path.name.endswith(MANIFEST_SUFFIX):
            path = path.with_name(path.name[:-len(MANIFEST_SUFFIX)])
        if not path.is_file() or path.resolve() in self.sent_lists():
            return None
        return path

    def process(self, path: Path) -> str | None:
        """Import one data file if it is ready; returns what happened (None: not ready)."""
        path = self.candidate(path)
        if path is None:
            return None
        try:
            man = read_manifest(path)
        except ImportFailed as exc:
            target = quarantine(path, str(exc), self.quarantine, self.cfg.timezone)
            return self._say(f"quarantined {path.name} -> {target}: {exc}")
        if man is None:
            # the file's age, not the watcher's memory: `watch --once` from cron decides the same
            if time.time() - path.stat().st_mtime < self.cfg.manifest_wait_seconds:
                return None  # the manifest may still be on its way
            target = quarantine(path, f"{path}: no manifest {path.name}{MANIFEST_SUFFIX} arrived within "
                                      f"{self.cfg.manifest_wait_seconds} s (it gives the consultation date)",
                                self.quarantine, self.cfg.timezone)
            return self._say(f"quarantined {path.name} -> {target}: no manifest")
        sent = man.get("sent")
        try:
            result = import_file(self.cfg, path, who=self.who)
        except ImportFailed as exc:
            target = quarantine(path, str(exc), self.quarantine, self.cfg.timezone)
            return self._say(f"quarantined {path.name} -> {target}: {exc}")
        target = move_done(path, self.done, self.cfg.timezone)
        if sent and Path(sent).is_file() and Path(sent).parent.resolve() == self.folder.resolve():
            move_done(Path(sent), self.done, self.cfg.timezone)
        return self._say(f"{result.message} -> {target}")

    def _say(self, text: str) -> str:
        self.log(text)
        return text

    # -- loops
    def rescan(self) -> None:
        for p in sorted(self.folder.iterdir()):
            if p.is_file():
                self.queue.put(p)

    def drain(self) -> list[str]:
        out = []
        while True:
            try:
                p = self.queue.get_nowait()
            except queue.Empty:
                return out
            r = self.process(p)
            if r:
                out.append(r)

    def run(self, polling: bool = False, once: bool = False) -> None:
        """Foreground loop (systemd); ``once``: one rescan, then return (cron)."""
        self.rescan()
        if once:
            self.drain()
            return
        from watchdog.events import FileSystemEventHandler
        if polling:
            from watchdog.observers.polling import PollingObserver as Observer
        else:
            from watchdog.observers import Observer

        inbox = self

        class Handler(FileSystemEventHandler):
            def on_moved(self, event):
                if not event.is_directory:
                    inbox.queue.put(Path(event.dest_path))

            def on_closed(self, event):
                if not event.is_directory:
                    inbox.queue.put(Path(event.src_path))

            def on_created(self, event):  # the polling observer has no close events
                if polling and not event.is_directory:
                    inbox.queue.put(Path(event.src_path))

            on_modified = on_created

        observer = Observer()
        observer.schedule(Handler(), str(self.folder), recursive=False)
        observer.start()
        self.log(f"watching {self.folder} (rescan every {self.cfg.rescan_seconds} s)")
        next_scan = time.monotonic() + self.cfg.rescan_seconds
        try:
            while not self.stop.is_set():
                try:
                    p = self.queue.get(timeout=0.2)
                except queue.Empty:
                    p = None
                if p is not None:
                    try:
                        self.process(p)
                    except Exception as exc:  # one bad file must not stop the watcher
                        self.log(f"error on {p}: {type(exc).__name__}: {exc}")
                if time.monotonic() >= next_scan:
                    self.rescan()
                    next_scan = time.monotonic() + self.cfg.rescan_seconds
        finally:
            observer.stop()
            observer.join(timeout=5)
