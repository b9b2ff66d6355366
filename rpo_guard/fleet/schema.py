"""The central PostgreSQL database of a fleet: schema, versioned migrations, connections.

Every replicated table carries ``changed_seq``, the change (``change_log.seq``)
that last wrote the row, stamped by a trigger from the transaction's
``rpo.change_seq`` setting: a write outside :func:`rpo_guard.fleet.central.change`
fails instead of slipping past the replicas. Consultation rows are immutable
and belong to their batch, so they carry no stamp: a replica fetches them by
batch. Writers take one advisory lock from the moment they draw a sequence
number to their commit, so sequence numbers become visible in order and a
replica that has applied up to N never misses a smaller one.
"""
from __future__ import annotations

CHANGE_LOCK = 7240417          # pg_advisory_xact_lock key held from nextval('change_seq') to commit
CHANNEL = "rpo_guard_changes"  # NOTIFY channel; the payload is the new sequence number

# version -> (what it does, statements). Never edit a released step: add a new one.
STEPS: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("the fleet's central register, change log, outbox receipts, box status and audit trail", (
        "CREATE SEQUENCE IF NOT EXISTS change_seq",
        """CREATE TABLE IF NOT EXISTS change_log (
            seq bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), kind text NOT NULL,
            origin text NOT NULL DEFAULT '', summary text NOT NULL DEFAULT '', batch_id bigint,
            rows bigint NOT NULL DEFAULT 0)""",
        """CREATE OR REPLACE FUNCTION rpo_stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.changed_seq := nullif(current_setting('rpo.change_seq', true), '')::bigint;
  IF NEW.changed_seq IS NULL THEN
    RAISE EXCEPTION 'rpo_guard: % written outside a change of the change log', TG_TABLE_NAME;
  END IF;
  RETURN NEW;
END $$""",
        """CREATE TABLE IF NOT EXISTS batches (
            id bigserial PRIMARY KEY, kind text NOT NULL, source_file text, sha256 text, shape text,
            rows bigint, consulted_on text, brand text NOT NULL DEFAULT '', valid_until text,
            imported_by text, imported_at text NOT NULL, status text NOT NULL DEFAULT 'ok', error text,
            registered bigint, encoding text, sent_file text, sent_sha256 text, seconds double precision,
            changed_seq bigint NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS batches_sha256 ON batches (sha256, kind)",
        "CREATE INDEX IF NOT EXISTS batches_changed ON batches (changed_seq)",
        """CREATE TABLE IF NOT EXISTS consultations (
            batch_id bigint NOT NULL, number text COLLATE "C" NOT NULL, registered smallint NOT NULL,
            registration_date text, PRIMARY KEY (batch_id, number))""",
        """CREATE TABLE IF NOT EXISTS consents (
            id bigserial PRIMARY KEY, number text NOT NULL, brand text NOT NULL DEFAULT '', kind text NOT NULL,
            given_at text NOT NULL, given_on text NOT NULL, ends_at text, ends_on text, channel text,
            evidence text, source_file text, source_line bigint, batch_id bigint, origin_key text UNIQUE,
            changed_seq bigint NOT NULL)""",
        "CREATE UNIQUE INDEX IF NOT EXISTS consents_key ON consents (number, brand, kind, given_at)",
        "CREATE INDEX IF NOT EXISTS consents_changed ON consents (changed_seq)",
        """CREATE TABLE IF NOT EXISTS dnc (
            id bigserial PRIMARY KEY, number text NOT NULL, brand text NOT NULL DEFAULT '', reason text,
            added_by text, added_at text NOT NULL, removed_by text, removed_at text, source_file text,
            source_line bigint, batch_id bigint, origin_key text UNIQUE, changed_seq bigint NOT NULL)""",
        "CREATE UNIQUE INDEX IF NOT EXISTS dnc_active ON dnc (number, brand) WHERE removed_at IS NULL",
        "CREATE INDEX IF NOT EXISTS dnc_changed ON dnc (changed_seq)",
        """CREATE TABLE IF NOT EXISTS caller_ids (
            id bigserial PRIMARY KEY, number text NOT NULL, brand text NOT NULL DEFAULT '', note text,
            added_by text, added_at text NOT NULL, removed_by text, removed_at text,
            changed_seq bigint NOT NULL)""",
        "CREATE UNIQUE INDEX IF NOT EXISTS caller_ids_active ON caller_ids (number, brand) WHERE removed_at IS NULL",
        "CREATE INDEX IF NOT EXISTS caller_ids_changed ON caller_ids (changed_seq)",
        """CREATE TABLE IF NOT EXISTS silent_calls (
            id bigserial PRIMARY KEY, number text NOT NULL, brand text NOT NULL DEFAULT '', at text NOT NULL,
            on_day text NOT NULL, uniqueid text, source text, recorded_by text, recorded_at text NOT NULL,
            origin_key text UNIQUE, changed_seq bigint NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS silent_calls_changed ON silent_calls (changed_seq)",
        # patron saints and other site days, kept centrally for the record (a box's calling
        # hours still read its own [conduct] local_holidays: a site's saint is not the fleet's)
        """CREATE TABLE IF NOT EXISTS local_holidays (
            day text NOT NULL, site text NOT NULL DEFAULT '', name text NOT NULL,
            changed_seq bigint NOT NULL, PRIMARY KEY (day, site))""",
        *[f"""CREATE OR REPLACE TRIGGER {t}_stamp BEFORE INSERT OR UPDATE ON {t}
              FOR EACH ROW EXECUTE FUNCTION rpo_stamp_change()"""
          for t in ("batches", "consents", "dnc", "caller_ids", "silent_calls", "local_holidays")],
        # a box's outbox entry, applied once whatever the number of deliveries
        """CREATE TABLE IF NOT EXISTS outbox_applied (
            key text PRIMARY KEY, box text NOT NULL, kind text NOT NULL, seq bigint NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())""",
        # what each box's agent last reported, for `rpo-guard status` at any box
        """CREATE TABLE IF NOT EXISTS boxes (
            box text PRIMARY KEY, last_seq bigint NOT NULL DEFAULT 0, confirmed_at timestamptz,
            reported_at timestamptz NOT NULL DEFAULT now(), outbox_depth bigint NOT NULL DEFAULT 0,
            pending_batches bigint NOT NULL DEFAULT 0, audit_local_id bigint, skew_seconds double precision,
            version text)""",
        # every box's audit attempts, as its audit.db holds them (the hash covers these values)
        """CREATE TABLE IF NOT EXISTS box_attempts (
            box text NOT NULL, id bigint NOT NULL, at text NOT NULL, uniqueid text, channel text, callerid text,
            accountcode text, brand text, dialed text, e164 text, decision text NOT NULL, reason text NOT NULL,
            basis text, detail text, latency_ms double precision, via text, prev_hash text NOT NULL,
            hash text NOT NULL, shipped_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (box, id))""",
        "CREATE INDEX IF NOT EXISTS box_attempts_at ON box_attempts (at)",
    )),
}
SCHEMA_VERSION = max(STEPS)


class CentralError(RuntimeError):
    """The centre cannot be reached or refused the write; nothing was written."""


def connect(conninfo: str, autocommit: bool = False, timeout: int = 5):
    """A psycopg connection to the centre. ``conninfo``: a postgresql:// URI, a libpq
    conninfo string, or the folder of a unix socket (``/run/postgresql``)."""
    try:
        import psycopg
    except ImportError:
        raise CentralError("fleet mode needs psycopg 3: pip install 'rpo_guard[fleet]'") from None

    target = conninfo.strip()
    if target.startswith("/"):
        target = f"host={target} dbname=rpo"
    try:
        return psycopg.connect(target, autocommit=autocommit, connect_timeout=timeout)
    except psycopg.Error as exc:
        raise CentralError(f"central database unreachable ({_redact(conninfo)}): {exc}".strip()) from None


def _redact(conninfo: str) -> str:
    """The conninfo without its password, for messages."""
    import re
    text = re.sub(r"(password\s*=\s*)\S+", r"\1***", conninfo)
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", text)


def version(conn) -> int:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def migrate(conn) -> list[int]:
    """Bring the central schema to SCHEMA_VERSION; returns the steps applied (each in its own transaction)."""
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGE_LOCK + 1,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY,"
                     " applied_at timestamptz NOT NULL DEFAULT now(), description text NOT NULL)")
    for step in sorted(STEPS):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGE_LOCK + 1,))
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (step,)).fetchone():
                continue
            description, statements = STEPS[step]
            for sql in statements:
                conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version, description) VALUES (%s, %s)", (step, description))
            applied.append(step)
    return applied


def check(conn) -> None:
    """CentralError unless the centre's schema is this rpo_guard's."""
    found = version(conn)
    if found != SCHEMA_VERSION:
        raise CentralError(f"central database schema version {found}, this rpo_guard needs {SCHEMA_VERSION}"
                           + (" (run `rpo-guard fleet migrate`)" if found < SCHEMA_VERSION else " (upgrade rpo_guard)"))
