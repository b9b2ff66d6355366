"""The attempt caps in the server: committed attempts plus the ones still in flight.

An allowed attempt is in flight from the moment its lookup allows it until
the writer has committed (or failed to write) its row: the group commit holds
rows back for up to a millisecond, and a second call to the same number
checked meanwhile must count the first, or both could pass at N-1. The count
a lookup sees is the committed rows (``audit.attempts.count_allowed``) plus
the rows in flight, and the allowed attempt is reserved (``hold``) under the same lock;
the writer commits and releases under that lock too, so a row is never
counted twice nor missed. In the loop (``lookup_threads = 0``) the lock is
never contended; with worker threads it orders their counts.

Where the committed rows are counted: in the loop, on the writer's own
connection (:meth:`AuditWriter.connection`). A connection's page cache
survives its own commits but not another connection's, so a separate reader
would read the e164 index's pages again after every group commit (about 60 us
a count with a 1,000,000-row log, against about 15 on the writer's warm
cache; bench/brand_policies.py). Worker threads cannot share that connection
and count on read-only connections of their own.
"""
from __future__ import annotations

import threading
from datetime import date

from rpo_guard.audit.attempts import count_allowed


class InFlight:
    """Allowed attempts decided but not yet committed, per number and brand."""

    def __init__(self):
        self.lock = threading.Lock()
        self._by_number: dict[str, dict[str, int]] = {}

    def count(self, e164: str, brand: str | None) -> int:
        brands = self._by_number.get(e164)
        if not brands:
            return 0
        return sum(brands.values()) if brand is None else brands.get(brand, 0)

    def hold(self, e164: str, brand: str) -> tuple[str, str]:
        brands = self._by_number.setdefault(e164, {})
        brands[brand] = brands.get(brand, 0) + 1
        return e164, brand

    def release(self, held: tuple[str, str]) -> None:
        """Called with ``lock`` held (the writer, after the commit)."""
        e164, brand = held
        brands = self._by_number.get(e164)
        if brands is None or brand not in brands:
            return
        brands[brand] -= 1
        if brands[brand] <= 0:
            del brands[brand]
            if not brands:
                del self._by_number[e164]

    def release_now(self, held) -> None:
        """A reserved attempt that will not be written (its answer came too late)."""
        if held is not None:
            with self.lock:
                self.release(held)

    def __len__(self) -> int:
        return sum(sum(b.values()) for b in self._by_number.values())


class ServerAttempts:
    """What :func:`rpo_guard.guard.check_call` counts with in the server (one per lookup thread)."""

    def __init__(self, inflight: InFlight, conn=None, writer=None):
        self.inflight = inflight
        self.lock = inflight.lock
        self.conn = conn        # a read-only connection of a lookup thread, or
        self.writer = writer    # the AuditWriter, whose connection the loop counts on

    def count(self, e164: str, brand: str | None, since: date) -> int:
        conn = self.conn if self.writer is None else self.writer.connection()
        return count_allowed(conn, e164, brand, since) + self.inflight.count(e164, brand)

    def hold(self, e164: str, brand: str):
        return self.inflight.hold(e164, brand)
