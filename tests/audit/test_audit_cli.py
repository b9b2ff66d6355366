"""``rpo-guard audit ...`` on real files: filters, explanations, export, summary, digest, prune."""
from __future__ import annotations

import os
import csv
import io
import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from audit_helpers import ROME, fill, make_row, raw
from click.testing import CliRunner
from conftest import agi_path, days

from rpo_guard import config as config_mod
from rpo_guard.audit.log import COLUMNS, AuditLog, row_hash
from rpo_guard.audit.query import EXPORT_COLUMNS
from rpo_guard.cli.main import cli
from rpo_guard.harness import Channel, run_process_agi


def run(env, *args, code=0):
    res = CliRunner().invoke(cli, ["--config", str(env.conf), "audit", *args], catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res


@pytest.fixture
def filled(env):
    """200 rows whose values are known (audit_helpers.make_row), written through AuditLog."""
    env.data.mkdir(parents=True)
    fill(env.cfg.audit_db, 200)
    return env


def rows_py(n=200):
    return [dict(make_row(i), id=i + 1) for i in range(n)]


def listed_ids(env, *args):
    out = run(env, "list", "--limit", "0", "--json", *args).stdout
    return [json.loads(line)["id"] for line in out.splitlines()]


def test_list_filters_match_the_rows_written(filled):
    rows = rows_py()
    by = lambda pred: [r["id"] for r in rows if pred(r)]  # noqa: E731
    assert listed_ids(filled) == [r["id"] for r in rows]
    target = rows[13]["e164"]
    for spelled in (target, "0039 " + target[3:6] + " " + target[6:], target[3:], "+39 (" + target[3:6] + ") " + target[6:]):
        assert listed_ids(filled, "--number", spelled) == by(lambda r: r["e164"] == target)
    assert listed_ids(filled, "--brand", "Telco Due") == by(lambda r: r["brand"] == "Telco Due")
    assert listed_ids(filled, "--decision", "block") == by(lambda r: r["decision"] == "BLOCK")
    assert listed_ids(filled, "--reason", "consent", "--reason", "contract") == \
        by(lambda r: r["reason"] in ("consent", "contract"))
    assert listed_ids(filled, "--caller-id", "0600000003") == by(lambda r: r["callerid"] == "0600000003")
    assert listed_ids(filled, "--uniqueid", rows[77]["uniqueid"]) == [78]
    assert listed_ids(filled, "--brand", "Energia Uno", "--decision", "ALLOW", "--caller-id", "0600000001") == \
        by(lambda r: r["brand"] == "Energia Uno" and r["decision"] == "ALLOW" and r["callerid"] == "0600000001")
    # time range: dates are whole days in the rules' timezone, --until inclusive
    at = lambda r: datetime.fromisoformat(r["at"])  # noqa: E731
    lo, hi = datetime(2026, 10, 3, tzinfo=ROME), datetime(2026, 10, 6, tzinfo=ROME)
    assert listed_ids(filled, "--since", "2026-10-03", "--until", "2026-10-05") == \
        by(lambda r: lo <= at(r) < hi)
    # a moment with another offset is compared as a moment, not as text
    moment = datetime(2026, 10, 4, 12, 30, tzinfo=ROME)
    utc = moment.astimezone(timezone.utc)
    assert listed_ids(filled, "--since", utc.isoformat()) == by(lambda r: at(r) >= moment)
    assert listed_ids(filled, "--until", "2026-10-04T12:30") == by(lambda r: at(r) < moment)
    assert run(filled, "list", "--number", "12ab", code=2).exit_code == 2
    # default: the newest 100, oldest first
    assert listed_ids(filled)[-100:] == [json.loads(x)["id"] for x in run(filled, "list", "--json").stdout.splitlines()]


def test_times_across_the_dst_change_filter_as_moments(env):
    env.data.mkdir(parents=True)
    log = AuditLog(env.cfg.audit_db)
    # 2026-10-25: Rome goes from +02:00 to +01:00 at 03:00; 02:30 happens twice
    first = datetime(2026, 10, 25, 2, 30, tzinfo=ROME, fold=0)   # 00:30 UTC
    second = datetime(2026, 10, 25, 2, 30, tzinfo=ROME, fold=1)  # 01:30 UTC
    log.append(make_row(1, at=second))
    log.append(make_row(2, at=first))  # written later, happened earlier
    log.close()
    assert listed_ids(env, "--since", "2026-10-25T01:00:00+00:00") == [1]
    assert listed_ids(env, "--until", "2026-10-25T01:00:00Z") == [2]


def test_export_round_trips_csv_and_jsonl(filled, tmp_path):
    db_rows = {r["id"]: r for r in filled.audit_rows()}
    out = tmp_path / "a.jsonl"
    run(filled, "export", "--format", "jsonl", "--out", str(out))
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [list(x) for x in lines] == [list(EXPORT_COLUMNS)] * 200
    for x in lines:
        db = db_rows[x["id"]]
        assert {c: x[c] for c in db} == db  # every stored column, value and type
        assert row_hash(x["prev_hash"], x["id"], [x[c] for c in COLUMNS]) == x["hash"]  # verifiable off the machine
        assert x["at_utc"].endswith("Z") and datetime.fromisoformat(x["at_utc"]) == datetime.fromisoformat(x["at"])
        basis = json.loads(x["basis"])
        assert (x["basis_kind"], x["batch_id"], x["consulted_on"]) == (basis["kind"], basis["batch_id"],
                                                                       basis["consulted_on"])
    csv_text = run(filled, "export", "--format", "csv").stdout
    rd = list(csv.reader(io.StringIO(csv_text)))
    assert tuple(rd[0]) == EXPORT_COLUMNS and len(rd) == 201
    for cells in rd[1:]:
        x = dict(zip(EXPORT_COLUMNS, cells))
        db = db_rows[int(x["id"])]
        for c, v in db.items():
            assert x[c] == ("" if v is None else str(v) if not isinstance(v, float) else repr(v)), c
        values = [None if x[c] == "" and db[c] is None else x[c] for c in COLUMNS]
        values[COLUMNS.index("latency_ms")] = float(x["latency_ms"])
        assert row_hash(x["prev_hash"], int(x["id"]), values) == x["hash"]
    # the same filters as list
    assert len(run(filled, "export", "--format", "jsonl", "--reason", "consent").stdout.splitlines()) == \
        len(listed_ids(filled, "--reason", "consent"))


def test_summary_counts(filled):
    groups = json.loads(run(filled, "summary", "--json").stdout)
    expect = Counter((r["at"][:10], r["brand"], r["decision"], r["reason"]) for r in rows_py())
    assert {(g["day"], g["brand"], g["decision"], g["reason"]): g["attempts"] for g in groups} == expect
    text = run(filled, "summary", "--brand", "Telco Due").stdout
    n = sum(v for k, v in expect.items() if k[1] == "Telco Due")
    assert f"total {n}:" in text


def test_verify_and_digest_commands(filled, tmp_path):
    key = tmp_path / "digest.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    filled.write_config(f"[audit]\ndigest_key_file = {key}\n")
    assert run(filled, "verify").stdout.startswith("OK: 200 rows intact")
    digests = tmp_path / "digests.jsonl"
    for day in ("2026-10-02", "2026-10-05"):
        run(filled, "digest", "--date", day, "--out", str(digests))
    ds = [json.loads(x) for x in digests.read_text().splitlines()]
    assert all(d["hmac_sha256"] for d in ds) and ds[0]["date"] == "2026-10-02"
    assert "2 digest(s) matched" in run(filled, "verify", "--digest", str(digests)).stdout
    # a digest edited by hand no longer carries a valid signature
    forged = tmp_path / "forged.jsonl"
    forged.write_text(json.dumps(dict(ds[0], head_hash="0" * 64)) + "\n")
    assert "signature does not match" in run(filled, "verify", "--digest", str(forged), code=1).stdout
    # tampering: exit 1 and the first broken row named
    w = raw(filled.cfg.audit_db)
    w.execute("DROP TRIGGER attempts_no_update")
    w.execute("UPDATE attempts SET callerid = '0000' WHERE id = 123")
    out = run(filled, "verify", "--json", code=1).stdout
    assert json.loads(out)["problem"] == {"kind": "edited", "row_id": 123,
                                          "message": "row 123 no longer matches its hash: its content was changed"}
    # the head is the last intact row's hash, not the genesis zeros
    intact = w.execute("SELECT hash FROM attempts WHERE id = 122").fetchone()[0]
    assert (json.loads(out)["last_id"], json.loads(out)["head_hash"]) == (122, intact) and intact != "0" * 64
    # an unreadable key is an error, never a silently unsigned digest
    filled.write_config(f"[audit]\ndigest_key_file = {tmp_path / 'missing.key'}\n")
    assert "digest_key_file" in run(filled, "digest", "--date", "2026-10-02", code=1).output


def test_prune_command_and_retention_setting(env):
    env.data.mkdir(parents=True)
    start = datetime.now(ROME).replace(hour=0, minute=30, second=0, microsecond=0) - timedelta(days=40)
    log = AuditLog(env.cfg.audit_db)
    log.append_many([make_row(i, at=start + timedelta(hours=i)) for i in range(200)])  # 40 days ago, ~8 days
    log.close()
    cut = (start + timedelta(days=3)).date().isoformat()
    n = 3 * 24  # the rows of the first three days
    out = run(env, "prune", "--before", cut, "--dry-run").stdout
    assert out.startswith(f"would remove {n} attempt(s)")
    assert len(env.audit_rows()) == 200
    out = run(env, "prune", "--before", cut).stdout
    assert out.startswith(f"removed {n} attempt(s)") and "checkpoint(s) 1..1" in out
    left = env.audit_rows()
    assert len(left) == 200 - n and left[0]["id"] == n + 1
    assert run(env, "verify").stdout.startswith(f"OK: {200 - n} rows intact")
    cp = raw(env.cfg.audit_db).execute("SELECT pruned_by, before, rows FROM checkpoints").fetchone()
    assert cp[1].startswith(cut + "T00:00:00+") and cp[2] == n and cp[0]
    assert f"({n} older attempts" in run(env, "summary").stdout
    # retention from the settings; nothing configured = a usage error
    assert run(env, "prune", code=2).exit_code == 2
    env.write_config("[audit]\nretention_days = 1\n")
    run(env, "prune")
    assert env.audit_rows() == []
    out = run(env, "verify").stdout
    assert out.startswith("OK: 0 rows intact") and "200 earlier rows pruned under 2 checkpoint(s)" in out
    tomorrow = (datetime.now(ROME) + timedelta(days=1)).date().isoformat()
    assert "in the future" in run(env, "prune", "--before", tomorrow, code=2).output


def test_audit_settings_are_validated(env):
    env.write_config("[audit]\nsynchronous = sometimes\n")
    with pytest.raises(config_mod.ConfigError, match=r"\[audit\] synchronous"):
        config_mod.load(str(env.conf))
    env.write_config("[audit]\nretention_days = -3\n")
    with pytest.raises(config_mod.ConfigError, match=r"\[audit\] retention_days"):
        config_mod.load(str(env.conf))
    env.write_config("[audit]\nretention_days = 400\nsynchronous = FULL\n")
    cfg = config_mod.load(str(env.conf))
    assert (cfg.retention_days, cfg.synchronous, cfg.digest_key_file) == (400, "full", "")


def test_sqlite_utils_opens_the_file_and_its_views(filled):
    import sqlite_utils
    db = sqlite_utils.Database(filled.cfg.audit_db)
    assert {"attempts", "checkpoints"} <= set(db.table_names())
    assert {"attempts_explained", "daily_counts"} <= set(db.view_names())
    assert db["attempts_explained"].count == 200
    assert sum(r["attempts"] for r in db["daily_counts"].rows) == 200
    first = next(db["attempts_explained"].rows_where("id = 1"))
    assert list(first) == list(EXPORT_COLUMNS) and first["batch_id"] == 1


# -- audit show, on attempts made through the real AGI -------------------------------

def call(env, number, brand, uid):
    s = run_process_agi(agi_path(), [number, brand], Channel(extension=number, uniqueid=uid,
                                                             callerid="0612340000"), env=env.agi_env)
    assert s.agistatus == "SUCCESS", s.transcript
    return int(s.channel.variables["RPO_AUDIT_ID"]), s


def test_show_explains_each_kind_of_basis(env):
    from rpo_guard.register.lists import dnc_add
    env.init()
    env.consult([("3331112222", "iscritto"), ("3331113333", "non iscritto"), ("3331114444", "iscritto")], days_ago=2)
    env.consents([("3331112222", "Energia Uno", "consent", days(1), "")])
    dnc_add(env.cfg, "3331114444", "", "asked never to be called again", who="test")
    ids = {what: call(env, number, "Energia Uno", f"1790000{i}.1")[0] for i, (what, number) in enumerate(
        [("consent", "3331112222"), ("free", "+39 333 111 3333"), ("dnc", "3331114444"), ("bad", "12")])}

    text = run(env, "show", str(ids["consent"])).stdout
    assert f"Attempt {ids['consent']}: ALLOWED (ALLOW consent)" in text
    assert "rule 11a: registered, and a consent for the brand" in text and "evidence ev-0" in text and "consents.csv line 2" in text
    text = run(env, "show", str(ids["free"])).stdout
    assert "rule 12: not registered at the newest consultation" in text and f"register consulted on {days(2)}" in text and "shared by every brand" in text
    assert "imported by test" in text and "sha256" in text
    text = run(env, "show", str(ids["dnc"])).stdout
    assert "REFUSED (BLOCK internal_dnc)" in text and "rule 2: the number is on the internal do-not-contact list" in text and "asked never to be called again" in text
    text = run(env, "show", str(ids["bad"])).stdout
    assert "rule 1: the dialed string is not a valid phone number" in text and "'12' (not a valid number)" in text
    assert "matches the content" in text and "links to row" in text
    # without the register database the audit row alone still explains the attempt
    os.rename(env.cfg.register_db, env.root / "elsewhere.db")
    text = run(env, "show", str(ids["free"])).stdout
    assert "batch 1, register consulted on" in text and "rpo.db not available" in text
    assert "no attempt 999" in run(env, "show", "999", code=1).output
