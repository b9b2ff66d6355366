"""Sync: shapes, encodings, bad input, idempotence, manifest, quarantine, status, kill -9, watcher."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import days, today_rome
from rpo_guard import sync
from rpo_guard.cli.main import cli
from rpo_guard.register.store import Store
from rpo_guard.sync import ImportFailed, import_consents, import_consultation, import_dnc, import_file

def d(n=1):
    return today_rome() - timedelta(days=n)


def registered(env, number, brand=""):
    store = Store(env.cfg.register_db)
    try:
        facts = store.facts(number, brand, today_rome())
    finally:
        store.close()
    return sorted((c.consulted_on.isoformat(), c.registered) for c in facts.consultations)


def batches(env):
    conn = sqlite3.connect(env.cfg.register_db)
    try:
        return conn.execute("SELECT kind, status, rows, registered, shape, encoding, error FROM batches"
                            " ORDER BY id").fetchall()
    finally:
        conn.close()


def write(env, name, text, encoding="utf-8"):
    p = env.root / name
    p.write_bytes(text.encode(encoding))
    return p


# --------------------------------------------------------------------------- shapes

def test_shape_status(env):
    p = write(env, "r.csv", "number,status\n0612345678,iscritto\n+39 333 1234567,non iscritto\n3331234568,registered\n")
    r = import_consultation(env.cfg, p, d(), who="t")
    assert (r.rows, r.registered) == (3, 2)
    assert registered(env, "+390612345678") == [(d().isoformat(), True)]  # leading 0 kept
    assert registered(env, "+393331234567") == [(d().isoformat(), False)]


def test_shape_registered_with_sent_list(env):
    sent = write(env, "sent.txt", "0612345678\n3331234567\n3331234568\n3331234567\n")
    res = write(env, "res.csv", "numero\n3331234568\n")
    r = import_consultation(env.cfg, res, d(), shape="registered", sent=sent, who="t")
    assert (r.rows, r.registered) == (3, 1)
    assert registered(env, "+393331234568") == [(d().isoformat(), True)]
    assert registered(env, "+390612345678") == [(d().isoformat(), False)]


def test_shape_cleared_with_sent_list(env):
    sent = write(env, "sent.csv", "number\n0612345678\n3331234567\n3331234568\n")
    res = write(env, "cleared.csv", "number\n0612345678\n")
    r = import_consultation(env.cfg, res, d(), shape="cleared", sent=sent, who="t")
    assert (r.rows, r.registered) == (3, 2)
    assert registered(env, "+390612345678") == [(d().isoformat(), False)]
    assert registered(env, "+393331234567") == [(d().isoformat(), True)]


def test_partial_shape_needs_sent_list(env):
    res = write(env, "res.csv", "number\n0612345678\n")
    with pytest.raises(ImportFailed, match="sent list"):
        import_consultation(env.cfg, res, d(), shape="registered", who="t")


# --------------------------------------------------------------------------- encodings and formats

@pytest.mark.parametrize("encoding,text", [
    ("utf-8", "numero;stato\n0612345678;sì\n3331234567;no\n"),
    ("utf-8-sig", "numero;stato\n0612345678;sì\n3331234567;no\n"),
    ("latin-1", "numero;stato\n0612345678;sì\n3331234567;no\n"),
])
def test_encodings_detected(env, encoding, text):
    p = write(env, f"r-{encoding}.csv", text, encoding)
    r = import_consultation(env.cfg, p, d(), who="t")
    assert (r.rows, r.registered) == (2, 1)
    assert batches(env)[-1][5] == ("latin-1" if encoding == "latin-1" else "utf-8-sig")
    assert registered(env, "+390612345678") == [(d().isoformat(), True)]


def test_configured_source_without_header(env):
    env.write_config("[source fub]\nheader = no\ndelimiter = tab\nnumber_column = 2\nstatus_column = 1\n"
                     "registered_words = R\nnot_registered_words = L\nencoding = latin-1\n")
    p = write(env, "fub.tsv", "R\t0612345678\nL\t\"3331234567\"\n", "latin-1")
    r = import_consultation(env.cfg, p, d(), source="fub", who="t")
    assert (r.rows, r.registered) == (2, 1)
    with pytest.raises(ImportFailed, match="unknown source"):
        import_consultation(env.cfg, p, d(), source="nope", who="t")


# --------------------------------------------------------------------------- bad input

BAD = [
    ("bad number", "number,status\n0612345678,no\n12ab,no\n", r"bad\.csv:3: field 'number'"),
    ("unknown word", "number,status\n0612345678,forse\n", r"bad\.csv:2: field 'status': unknown status word 'forse'"),
    ("conflict", "number,status\n0612345678,no\n3331234567,no\n+39 06 12345678,si\n",
     r"bad\.csv:4: field 'number': \+390612345678 appears again with a conflicting status \(first on line 2\)"),
    ("empty", "", r"bad\.csv: the file is empty"),
    ("header only", "number,status\n", r"holds no result rows"),
    ("missing column", "telefono,foo\n0612345678,no\n", r"bad\.csv:1: missing column 'status'"),
]


@pytest.mark.parametrize("what,text,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_rejected_whole(env, what, text, message):
    env.consult([("0699999999", "no")])
    before = batches(env)
    p = write(env, "bad.csv", text)
    with pytest.raises(ImportFailed, match=message):
        import_consultation(env.cfg, p, d(), who="t")
    after = batches(env)
    assert after[:len(before)] == before and after[-1][1] == "failed"  # recorded, nothing imported
    assert registered(env, "+390612345678") == []
    assert registered(env, "+390699999999") == [(d().isoformat(), False)]


@pytest.mark.parametrize("ago,message", [(-1, "in the future"), (15, "older than the validity window")])
def test_bad_dates(env, ago, message):
    p = write(env, "r.csv", "number,status\n0612345678,no\n")
    with pytest.raises(ImportFailed, match=message):
        import_consultation(env.cfg, p, d(ago), who="t")


def test_sent_list_missing_a_returned_number(env):
    sent = write(env, "sent.csv", "0612345678\n3331234567\n")
    res = write(env, "res.csv", "number\n3331234567\n3331234599\n")
    with pytest.raises(ImportFailed, match=r"res\.csv:3: field 'number': \+393331234599 is not in the sent list"):
        import_consultation(env.cfg, res, d(), shape="registered", sent=sent, who="t")
    assert registered(env, "+390612345678") == []


def test_skip_invalid_reports_each_row(env):
    p = write(env, "r.csv", "number,status\n0612345678,no\nxx,no\n3331234567,boh\n3331234568,si\n")
    r = import_consultation(env.cfg, p, d(), skip_invalid=True, who="t")
    assert r.rows == 2 and len(r.skipped_rows) == 2
    assert "r.csv:3: field 'number'" in r.skipped_rows[0] and "r.csv:4: field 'status'" in r.skipped_rows[1]


def stored(env):
    conn = sqlite3.connect(env.cfg.register_db)
    try:
        return conn.execute("SELECT number, registered, registration_date FROM consultations ORDER BY number").fetchall()
    finally:
        conn.close()


def test_staging_in_small_chunks_keeps_every_row_and_line(env, monkeypatch):
    # rows are staged a chunk of consecutive lines at a time: force chunks of 2 rows, with gaps
    # (a blank line, a skipped row) and registration dates on some rows only
    monkeypatch.setattr(sync, "STAGE_CHUNK", 2)
    p = write(env, "r.csv", "number,status,registration_date\n"
              "0612345678,si,2020-01-02\n3331234567,no,\n3331234568,si,2021-03-04T10:00:00\n\n"
              "xx,no,\n3331234569,no,\n3331234570,si,\n0612345678,si,2020-01-02\n3331234571,no,1999-12-31\n")
    r = import_consultation(env.cfg, p, d(), skip_invalid=True, who="t")
    assert (r.rows, r.registered) == (6, 3) and len(r.skipped_rows) == 1 and "r.csv:6: field 'number'" in r.skipped_rows[0]
    assert stored(env) == [("+390612345678", 1, "2020-01-02"), ("+393331234567", 0, None),
                           ("+393331234568", 1, "2021-03-04"), ("+393331234569", 0, None),
                           ("+393331234570", 1, None), ("+393331234571", 0, "1999-12-31")]


def test_conflict_named_by_line_across_chunks_and_gaps(env, monkeypatch):
    monkeypatch.setattr(sync, "STAGE_CHUNK", 2)
    p = write(env, "bad.csv", "number,status\n3331234560,no\n0612345678,no\n\n3331234561,si\n3331234562,no\n"
              "3331234563,no\n\n\n+39 06 12345678,si\n3331234560,si\n")
    with pytest.raises(ImportFailed, match=r"bad\.csv:11: field 'number': \+393331234560 appears again with a "
                                           r"conflicting status \(first on line 2\)"):
        import_consultation(env.cfg, p, d(), who="t")
    assert stored(env) == []


def test_partial_shape_in_small_chunks_names_the_line(env, monkeypatch):
    monkeypatch.setattr(sync, "STAGE_CHUNK", 2)
    sent = write(env, "sent.txt", "0612345678\n\n3331234567\n3331234568\n3331234569\n\n3331234570\n")
    res = write(env, "res.csv", "number\n3331234568\n\n3331234570\n0612345678\n")
    r = import_consultation(env.cfg, res, d(), shape="registered", sent=sent, who="t")
    assert (r.rows, r.registered) == (5, 3)
    assert [row[:2] for row in stored(env)] == [("+390612345678", 1), ("+393331234567", 0), ("+393331234568", 1),
                                                 ("+393331234569", 0), ("+393331234570", 1)]
    bad = write(env, "bad.csv", "number\n3331234568\n\n3331234570\n0612345678\n3331234599\n")
    with pytest.raises(ImportFailed, match=r"bad\.csv:6: field 'number': \+393331234599 is not in the sent list"):
        import_consultation(env.cfg, bad, d(), shape="registered", sent=sent, who="t")


# --------------------------------------------------------------------------- idempotence, manifest, quarantine

def test_same_file_twice_is_a_noop(env):
    p = write(env, "r.csv", "number,status\n0612345678,si\n")
    first = import_consultation(env.cfg, p, d(), who="t")
    again = import_consultation(env.cfg, p, d(), who="t")
    assert again.skipped_duplicate_file and again.batch_id == first.batch_id and "already imported" in again.message
    assert len(batches(env)) == 1


def test_consents_upsert_with_provenance(env):
    rows = "number,brand,kind,given_at,ends_at,channel,evidence\n0612345678,acme,consent,{g},,web,ev1\n"
    a = write(env, "c1.csv", rows.format(g=days(10)))
    assert import_consents(env.cfg, a, who="t").rows == 1
    jl = write(env, "c2.jsonl", "\n".join(json.dumps(o) for o in [
        {"number": "0612345678", "brand": "acme", "kind": "consent", "given_at": days(10), "channel": "web",
         "evidence": "ev1"},
        {"number": "3331234567", "brand": "", "kind": "optout", "given_at": days(2)}]) + "\n")
    r = import_consents(env.cfg, jl, who="t")
    assert r.rows == 1 and "1 new" in r.message  # the known record changed nothing
    conn = sqlite3.connect(env.cfg.register_db)
    prov = conn.execute("SELECT number, source_file, source_line FROM consents ORDER BY number").fetchall()
    assert prov == [("+390612345678", str(a), 2), ("+393331234567", str(jl), 2)]
    bad = write(env, "c3.jsonl", json.dumps({"number": "0612345678", "brand": "acme", "kind": "consent",
                                             "given_at": days(3)}) + "\n" + json.dumps(
        {"number": "06-nope", "brand": "acme", "kind": "consent", "given_at": days(3)}) + "\n")
    with pytest.raises(ImportFailed, match=r"c3\.jsonl:2: field 'number'"):
        import_consents(env.cfg, bad, who="t")
    assert conn.execute("SELECT count(*) FROM consents").fetchone()[0] == 2  # nothing of c3 landed


def test_dnc_import_csv_and_jsonl(env):
    a = write(env, "dnc.csv", "number,brand,reason\n0612345678,,asked\n3331234567,acme,\n")
    assert import_dnc(env.cfg, a, who="t").rows == 2
    b = write(env, "dnc.jsonl", '{"number": "0612345678", "action": "remove"}\n{"number": "3331234567", "brand": "acme"}\n')
    r = import_dnc(env.cfg, b, who="t")
    assert "0 do-not-contact entries added, 1 removed" in r.message
    bad = write(env, "dnc2.csv", "number\nnope\n")
    with pytest.raises(ImportFailed, match=r"dnc2\.csv:2: field 'number'"):
        import_dnc(env.cfg, bad, who="t")


def test_manifest_gives_the_date_never_today(env):
    p = write(env, "r.csv", "number,status\n0612345678,si\n")
    with pytest.raises(ImportFailed, match="no consultation date"):
        import_file(env.cfg, p, who="t")
    Path(str(p) + ".manifest.json").write_text(json.dumps({"date": days(2), "brand": "acme"}))
    with pytest.raises(ImportFailed, match="the manifest"):
        import_file(env.cfg, p, consulted_on=d(3), who="t")
    r = import_file(env.cfg, p, who="t")
    assert f"consulted on {days(2)}" in r.message and "brand acme" in r.message


def test_cli_import_quarantine_and_status_codes(env):
    runner = CliRunner()
    env.init()
    res = runner.invoke(cli, ["status"])
    assert res.exit_code == 2, res.output  # nothing valid: every call would be blocked
    good = write(env, "good.csv", "number,status\n0612345678,si\n3331234567,no\n")
    res = runner.invoke(cli, ["import-consultation", str(good), "--date", days(1), "--quiet"])
    assert res.exit_code == 0 and "2 numbers" in res.output
    res = runner.invoke(cli, ["status", "--json"])
    rep = json.loads(res.output)
    assert res.exit_code == 0 and rep["brands"][0]["numbers_consulted"] == 2 and rep["brands"][0]["registered"] == 1
    bad = write(env, "bad.csv", "number,status\n0612345678,forse\n")
    res = runner.invoke(cli, ["import-consultation", str(bad), "--date", days(1), "--quarantine"])
    assert res.exit_code == 1 and "bad.csv:2: field 'status'" in res.output
    q = env.cfg.inbox / "quarantine"
    assert not bad.exists() and (q / "bad.csv").exists()
    assert "unknown status word" in (q / "bad.csv.reason.txt").read_text()
    res = runner.invoke(cli, ["status", "--json"])
    assert res.exit_code == 1 and json.loads(res.output)["failed_since_last_success"][0]["kind"] == "consultation"
    res = runner.invoke(cli, ["status"])
    assert res.exit_code == 1 and "FAILED" in res.output


# --------------------------------------------------------------------------- kill -9 mid-import

def _big_file(path: Path, n: int, status: str) -> None:
    with open(path, "w") as fh:
        fh.write("number,status\n")
        for i in range(n):
            fh.write(f"3{2 + i % 7}{(i * 2654435761) % 10**8:08d},{status}\n")


def test_kill_9_mid_import_leaves_previous_data(env):
    env.consult([("0612345678", "no"), ("3331234567", "si")])
    before = batches(env)
    big = env.root / "big.csv"
    _big_file(big, 300_000, "registered")
    code = ("import sys, datetime; from rpo_guard import config; from rpo_guard.sync import import_consultation;"
            "cfg = config.load(sys.argv[1]);"
            "import_consultation(cfg, sys.argv[2], datetime.date.fromisoformat(sys.argv[3]), who='kill')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(env.conf), str(big), days(1)])
    try:
        # wait until the write transaction is open and the staging temp file is in use, then kill
        deadline = time.monotonic() + 60
        in_txn = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                fds = [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")]
            except OSError:
                fds = []
            if any("etilqs" in f for f in fds):
                in_txn = True
                break
            time.sleep(0.002)
        # lookups work while the import runs
        assert registered(env, "+393331234567") == [(d().isoformat(), True)]
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert in_txn, "the import finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert batches(env) == before  # nothing of the killed import
    assert registered(env, "+390612345678") == [(d().isoformat(), False)]
    assert registered(env, "+393331234567") == [(d().isoformat(), True)]
    assert registered(env, "+393200000000") == []
    # and the next import of the same file works
    r = import_consultation(env.cfg, big, d(), who="t")
    assert r.rows == 300_000


# --------------------------------------------------------------------------- watched inbox

def test_watcher_imports_renamed_and_closed_files(env):
    from rpo_guard.register.watch import Inbox

    env.write_config("[sync]\nrescan_seconds = 3600\n")
    env.init()
    log: list[str] = []
    box = Inbox(env.cfg, env.root / "inbox", log=log.append)
    t = threading.Thread(target=box.run, daemon=True)
    t.start()
    try:
        time.sleep(0.5)  # the observer is up
        inbox = env.root / "inbox"
        # 1. arrives by rename: manifest first, the data under a temporary name, then renamed
        (inbox / "a.csv.manifest.json").write_text(json.dumps({"date": days(1)}))
        tmp = inbox / "a.csv.part"
        tmp.write_text("number,status\n0612345678,si\n")
        os.rename(tmp, inbox / "a.csv")
        # 2. written in place and closed (its manifest already there)
        (inbox / "b.csv.manifest.json").write_text(json.dumps({"date": days(1), "brand": "acme"}))
        with open(inbox / "b.csv", "w") as fh:
            fh.write("number,status\n3331234567,no\n")
        # 3. a bad one
        (inbox / "c.csv.manifest.json").write_text(json.dumps({"date": days(1)}))
        with open(inbox / "c.csv", "w") as fh:
            fh.write("number,status\nabc,no\n")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(log) < 4:
            time.sleep(0.05)
    finally:
        box.stop.set()
        t.join(10)
    assert (inbox / "done" / "a.csv").exists() and (inbox / "done" / "a.csv.manifest.json").exists()
    assert (inbox / "done" / "b.csv").exists()
    assert (inbox / "quarantine" / "c.csv").exists()
    assert "c.csv:2: field 'number'" in (inbox / "quarantine" / "c.csv.reason.txt").read_text()
    assert not (inbox / "a.csv.part").exists() and not any(inbox.glob("*.csv"))
    assert registered(env, "+390612345678") == [(d().isoformat(), True)]
    assert registered(env, "+393331234567", "acme") == [(d().isoformat(), False)]


def test_watcher_rescan_once_and_missing_manifest(env):
    from rpo_guard.register.watch import Inbox

    env.write_config("[sync]\nmanifest_wait_seconds = 1\n")
    inbox = env.root / "inbox"
    inbox.mkdir()
    (inbox / "x.csv").write_text("number,status\n0612345678,si\n")
    (inbox / ".hidden.csv").write_text("junk")
    box = Inbox(env.cfg, inbox, log=lambda s: None)
    box.run(once=True)
    assert (inbox / "x.csv").exists()  # waits for its manifest
    old = time.time() - 5
    os.utime(inbox / "x.csv", (old, old))
    box.run(once=True)
    assert (inbox / "quarantine" / "x.csv").exists() and (inbox / ".hidden.csv").exists()
    assert "no manifest" in (inbox / "quarantine" / "x.csv.reason.txt").read_text()


def test_an_sqlite_without_json_functions_fails_the_import_clearly(env, monkeypatch):
    """Imports stage rows through json_each: without it the import is refused whole, saying why."""
    import sqlite3
    from rpo_guard import sync

    env.init()
    real = sync._Stager.__init__

    def without_json(self, conn, *args, **kwargs):
        conn.create_function("json_valid", 1, None)  # removes the built-in
        real(self, conn, *args, **kwargs)

    monkeypatch.setattr(sync._Stager, "__init__", without_json)
    with pytest.raises(sync.ImportFailed, match=r"has no JSON functions \(built in from SQLite 3\.38\)"):
        env.consult([("3331234567", "iscritto")])
    assert sqlite3.connect(env.cfg.register_db).execute("SELECT COUNT(*) FROM consultations").fetchone()[0] == 0


def test_status_counts_each_brand_over_its_own_and_the_shared_consultations(env):
    from rpo_guard.register.status import status_report

    env.init()
    env.consult([("0612345678", "no"), ("3331234567", "si")], days_ago=2)               # shared
    env.consult([("3331234567", "no"), ("3479998887", "si")], days_ago=1, brand="Acme")  # Acme's own
    env.consents([("3331234567", "Beta", "consent", days(1), "")])                     # Beta: consents only
    brands = {b["brand"]: b for b in status_report(env.cfg)["brands"]}
    figures = {k: (b["numbers_consulted"], b["registered"], b["valid_consultations"], b["consents"])
               for k, b in brands.items()}
    # Acme: 3331234567's newest result (its own, not registered) wins over the shared one
    assert figures == {"": (2, 1, 1, 0), "Acme": (3, 1, 2, 0), "Beta": (2, 1, 1, 1)}


def test_interactive_import_shows_a_bar_that_says_when_it_writes(env):
    """On a terminal the import shows a progress bar, and says when reading is done and writing starts."""
    import pty
    from fastagi_support import rpo_guard_bin

    env.init()
    path = write(env, "tty.csv", "number,status\n" + "".join(f"33312{i:05d},no\n" for i in range(2000)))
    master, slave = pty.openpty()
    proc = subprocess.Popen([rpo_guard_bin(), "--config", str(env.conf), "import-consultation", str(path),
                             "--date", days(1)], stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(60) == 0
    text = out.decode(errors="replace")
    assert "tty.csv: writing into the register" in text and "100%" in text and "2000 numbers" in text
