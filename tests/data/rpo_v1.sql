-- rpo.db schema version 1, as created by rpo_guard before the first migration (commit d627d3a)
-- (dumped from sqlite_master of a database built by that code; frozen: never edit)
CREATE TABLE "batches" (
   "id" INTEGER PRIMARY KEY,
   "kind" TEXT NOT NULL,
   "source_file" TEXT,
   "sha256" TEXT,
   "shape" TEXT,
   "rows" INTEGER,
   "consulted_on" TEXT,
   "brand" TEXT DEFAULT '',
   "valid_until" TEXT,
   "imported_by" TEXT,
   "imported_at" TEXT NOT NULL,
   "status" TEXT NOT NULL DEFAULT 'ok',
   "error" TEXT,
   "registered" INTEGER,
   "encoding" TEXT,
   "sent_file" TEXT,
   "sent_sha256" TEXT,
   "seconds" REAL
);
CREATE INDEX "idx_batches_sha256_kind"
    ON "batches" ("sha256", "kind");
CREATE TABLE consultations ( number TEXT NOT NULL, batch_id INTEGER NOT NULL REFERENCES batches(id), registered INTEGER NOT NULL, registration_date TEXT, PRIMARY KEY (number, batch_id)) WITHOUT ROWID;
CREATE TABLE "consents" (
   "id" INTEGER PRIMARY KEY,
   "number" TEXT NOT NULL,
   "brand" TEXT DEFAULT '',
   "kind" TEXT NOT NULL,
   "given_at" TEXT NOT NULL,
   "given_on" TEXT NOT NULL,
   "ends_at" TEXT,
   "ends_on" TEXT,
   "channel" TEXT,
   "evidence" TEXT,
   "source_file" TEXT,
   "source_line" INTEGER,
   "batch_id" INTEGER REFERENCES "batches"("id")
);
CREATE UNIQUE INDEX "idx_consents_number_brand_kind_given_at"
    ON "consents" ("number", "brand", "kind", "given_at");
CREATE TABLE "dnc" (
   "id" INTEGER PRIMARY KEY,
   "number" TEXT NOT NULL,
   "brand" TEXT DEFAULT '',
   "reason" TEXT,
   "added_by" TEXT,
   "added_at" TEXT NOT NULL,
   "removed_by" TEXT,
   "removed_at" TEXT,
   "source_file" TEXT,
   "source_line" INTEGER,
   "batch_id" INTEGER
);
CREATE INDEX "idx_dnc_number_brand"
    ON "dnc" ("number", "brand");
CREATE UNIQUE INDEX dnc_active ON dnc(number, brand) WHERE removed_at IS NULL;
CREATE TABLE "caller_ids" (
   "id" INTEGER PRIMARY KEY,
   "number" TEXT NOT NULL,
   "brand" TEXT DEFAULT '',
   "note" TEXT,
   "added_by" TEXT,
   "added_at" TEXT NOT NULL,
   "removed_by" TEXT,
   "removed_at" TEXT
);
CREATE INDEX "idx_caller_ids_brand_number"
    ON "caller_ids" ("brand", "number");
CREATE UNIQUE INDEX caller_ids_active ON caller_ids(number, brand) WHERE removed_at IS NULL;
CREATE TABLE "silent_calls" (
   "id" INTEGER PRIMARY KEY,
   "number" TEXT NOT NULL,
   "brand" TEXT DEFAULT '',
   "at" TEXT NOT NULL,
   "on_day" TEXT NOT NULL,
   "uniqueid" TEXT,
   "source" TEXT,
   "recorded_by" TEXT,
   "recorded_at" TEXT NOT NULL
);
CREATE INDEX "idx_silent_calls_number_on_day"
    ON "silent_calls" ("number", "on_day");
CREATE TABLE "holidays" (
   "day" TEXT PRIMARY KEY,
   "year" INTEGER NOT NULL,
   "name" TEXT NOT NULL
);
CREATE TABLE "holiday_years" (
   "year" INTEGER PRIMARY KEY,
   "source" TEXT NOT NULL
);
PRAGMA user_version = 1;
