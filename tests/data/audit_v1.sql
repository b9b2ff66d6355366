-- audit.db schema version 1, as created by rpo_guard before the first migration (commit d627d3a)
-- (dumped from sqlite_master of a database built by that code; frozen: never edit)
-- (sqlite_sequence, created by SQLite itself for AUTOINCREMENT, is left out)
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- consecutive: previous id + 1
    at          TEXT NOT NULL,      -- ISO 8601 with UTC offset, in the rules' timezone
    uniqueid    TEXT,               -- Asterisk agi_uniqueid
    channel     TEXT,
    callerid    TEXT,
    accountcode TEXT,
    brand       TEXT,
    dialed      TEXT,               -- the string the dialplan passed
    e164        TEXT,               -- NULL when it was not a valid number
    decision    TEXT NOT NULL CHECK (decision IN ('ALLOW', 'BLOCK')),
    reason      TEXT NOT NULL,
    basis       TEXT,               -- JSON: the consultation, consent or DNC entry that decided
    detail      TEXT,
    latency_ms  REAL,
    via         TEXT,               -- agi | fastagi
    prev_hash   TEXT NOT NULL,      -- hash of the previous row (chain)
    hash        TEXT NOT NULL UNIQUE -- sha256 over prev_hash and this row (see audit_log.py)
);
CREATE INDEX attempts_time ON attempts(julianday(at));
CREATE INDEX attempts_e164 ON attempts(e164);
CREATE TRIGGER attempts_no_update BEFORE UPDATE ON attempts
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER attempts_no_delete BEFORE DELETE ON attempts
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only (old rows leave only through rpo-guard audit prune)'); END;
CREATE TABLE checkpoints (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    pruned_at       TEXT NOT NULL,  -- when (ISO 8601 with offset)
    pruned_by       TEXT NOT NULL,  -- operating-system user
    before          TEXT NOT NULL,  -- the cut: rows before this moment were removed
    first_id        INTEGER NOT NULL,
    last_id         INTEGER NOT NULL,
    rows            INTEGER NOT NULL,
    first_prev_hash TEXT NOT NULL,  -- prev_hash of the first removed row
    last_hash       TEXT NOT NULL,  -- hash of the last removed row = prev_hash of the next one
    first_at        TEXT,
    last_at         TEXT,
    counts          TEXT NOT NULL   -- JSON [[day, brand, decision, reason, n], ...] of the removed rows
);
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE VIEW attempts_explained AS
SELECT id, at, strftime('%Y-%m-%dT%H:%M:%fZ', at) AS at_utc, substr(at, 1, 10) AS day,
       uniqueid, channel, callerid, accountcode, brand, dialed, e164, decision, reason,
       json_extract(basis, '$.kind') AS basis_kind,
       json_extract(basis, '$.batch_id') AS batch_id,
       json_extract(basis, '$.consulted_on') AS consulted_on,
       json_extract(basis, '$.consent_id') AS consent_id,
       json_extract(basis, '$.given_at') AS consent_given_at,
       json_extract(basis, '$.evidence') AS evidence,
       json_extract(basis, '$.dnc_id') AS dnc_id,
       detail, latency_ms, via, basis, prev_hash, hash
FROM attempts;
CREATE VIEW daily_counts AS
SELECT substr(at, 1, 10) AS day, brand, decision, reason, count(*) AS attempts
FROM attempts GROUP BY 1, 2, 3, 4;
PRAGMA user_version = 1;
