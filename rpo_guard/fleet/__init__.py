"""Fleet mode: many Asterisk boxes, one central PostgreSQL (docs/fleet.md).

``schema`` the central database and its migrations; ``central`` every write
that goes to the centre (imports, lists, conduct, the outbox's forwarded
writes, shipped audit rows) and the per-box status; ``replica`` the box's
side in rpo.db (replica state, outbox, landing consultations); ``agent`` the
loop of `rpo-guard fleet agent` that keeps rpo.db a replica; ``audit`` the
central audit trail (verify, list). psycopg is imported here only, never on
the per-call path.
"""
