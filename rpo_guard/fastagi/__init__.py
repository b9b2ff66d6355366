"""The FastAGI server: ``rpo-guard serve [--listen HOST:PORT]``.

Asterisk connects for each call (``AGI(agi://127.0.0.1:4573/rpo_guard,NUMBER,BRAND)``),
sends the environment block (``agi_network: yes``, ``agi_network_script``
with any query string, ``agi_arg_N``, then an empty line) and answers our
commands one at a time. The session is the process AGI's, on the same code:
:func:`rpo_guard.guard.check_call` decides, :func:`rpo_guard.guard.audit_row`
builds the audit row, and the channel gets ``RPO_RESULT``, ``RPO_REASON`` and
``RPO_AUDIT_ID`` with the same ``SET VARIABLE "NAME" "VALUE"`` bytes pyst2 sends.

Design (one event loop thread; uvloop by default, ``[fastagi] event_loop``):

* each connection is a :class:`_Session`, an ``asyncio.Protocol`` state
  machine: no task, no stream reader and no timer per read. Every waiting
  state has a deadline the server's sweeper enforces a few times per read
  timeout. Against asyncio streams with a task per call, this and uvloop
  halve the CPU a call costs in protocol handling (bench/fastagi_load.py).
* lookups (about 30 us on a 20-million-number register) run in the loop thread by
  default (``lookup_threads = 0``) on a long-lived read-only
  :class:`~rpo_guard.register.store.Store`: SQLite's progress handler interrupts a
  query once ``deadline_ms`` is past and the store's busy timeout is capped
  at the deadline, so a lookup answers ``BLOCK``/``error`` in time (and is
  recorded). With ``lookup_threads = N`` they run in N worker threads, each
  with its own store, and the session stops waiting at the deadline whatever
  the thread is stuck on (storage that can stall); this costs CPU per call
  (GIL hand-offs).
* the register is in WAL mode: imports committed in place are seen by the
  next read transaction of an open connection. A *replaced* file (new inode)
  is detected by ``stat`` before each lookup; the worker opens the new file
  and only then drops the old connection, so no lookup ever fails on a swap.
  If the new file cannot be opened yet, the old connection keeps answering.
* audit rows are group-committed (:class:`AuditWriter`: one
  ``AuditLog.append_many`` transaction for all rows waiting). The session
  answers once its row is committed, so ``RPO_AUDIT_ID`` is the row id, as in
  the process AGI, and an attempt that cannot be recorded is refused
  (``BLOCK``/``error``), as there.
* commands are sent one at a time, each after the previous response: res_agi
  reads the socket through a stdio buffer and would not see a second
  pipelined command until more bytes arrived.
* Asterisk writes an inline ``HANGUP`` line when the caller hangs up, possibly
  before the response to a pending command; it is skipped (and noted) while
  reading responses. When done the server half-closes, reads Asterisk's
  trailing ``HANGUP`` and the end of the stream, and closes.
* every read is bounded in time (``read_timeout_ms``) and size
  (``max_request_bytes``); a silent, garbled, half-closed or oversized client
  costs its own connection only.
* peers outside ``allowed_peers`` are closed at once; more than
  ``max_connections`` sessions at once are closed at once. Asterisk then sees
  a session that set nothing, and the shipped dialplan blocks the call.
* SIGTERM/SIGINT: stop listening, let in-flight sessions finish (at most
  ``drain_timeout_ms``), flush the audit writer, exit 0. SIGHUP: reopen the
  audit log and the register connections (log rotation, moved files).
"""
