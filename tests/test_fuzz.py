"""Property tests over everything the guard is fed: numbers, AGI input, config, import files.

Properties: no crash, no traceback towards Asterisk, bounded time, only
whitelisted values on the AGI stream, and an unusable number always BLOCK.
Bounded in CI; `HYPOTHESIS_PROFILE=long ./dev test tests/test_fuzz.py` runs long.
"""
import re
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Env, agi_path, today_rome
from rpo_guard import config as config_mod
from rpo_guard.harness import Channel, encode_env, run_process_agi
from rpo_guard.rules.numbers import InvalidNumber, candidate_e164, normalize

SAFE_LINE = re.compile(r'SET VARIABLE "RPO_(RESULT|REASON|AUDIT_ID)" "[A-Za-z0-9_]{1,64}"'
                       r"""|VERBOSE "[A-Za-z0-9 _\-.,:;/=()'\[\]+@?]{0,400}" 1""")  # the configuration failure line
dialish = st.text(alphabet="0123456789+ -.()#*39\"'\n\r\t\x00abcé", max_size=30)


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    env = Env(tmp_path_factory.mktemp("fuzz"))
    env.init()
    env.consult([("3331234567", "no"), ("0612345678", "si")])
    return env


@given(st.one_of(dialish, st.text(max_size=80)))
def test_normalize_returns_e164_or_refuses(raw):
    try:
        e164 = normalize(raw)
    except InvalidNumber:
        return
    assert re.fullmatch(r"\+[1-9][0-9]{6,15}", e164)
    cand = candidate_e164(raw)
    assert cand is None or cand == e164 or not cand.startswith("+39")


def agi(env, args, block=None, channel=None):
    s = run_process_agi(agi_path(), args, channel or Channel(), env=env.agi_env, timeout=20,
                        env_block_override=block)
    assert s.agistatus != "TIMEOUT", "the AGI did not finish in bounded time"
    assert b"Traceback" not in s.stderr
    lines = [t.split("Rx << ", 1)[1] for t in s.transcript if "Rx << " in t]
    assert all(SAFE_LINE.fullmatch(line) for line in lines), lines
    return s


@given(number=dialish, brand=st.text(max_size=40).filter(lambda s: "\x00" not in s))
def test_agi_arguments(fuzz_env, number, brand):
    number = number.replace("\x00", "")
    s = agi(fuzz_env, [number, brand])
    if "\n" in number + brand:
        # Asterisk writes arguments raw into the environment block: a newline
        # ends the block early and the script reads garbage as answers. It
        # must then fail (AGISTATUS=FAILURE), which the dialplan blocks.
        assert not s.dialplan_allows
        return
    assert s.agistatus == "SUCCESS" and s.exit_code == 0
    try:
        e164 = normalize(number)
    except InvalidNumber:
        assert (s.result, s.reason) == ("BLOCK", "invalid_number")
        return
    expected = {"+393331234567": "ALLOW", "+390612345678": "BLOCK"}.get(e164, "BLOCK")
    assert s.result == expected


env_value = st.one_of(st.binary(max_size=200), st.just(b"x" * 200_000),
                      st.sampled_from([b"\r", b"\x00", b"\xff\xfe", b"a\rb", b"unknown", b""]))


@given(pairs=st.lists(st.tuples(st.sampled_from([b"agi_uniqueid", b"agi_callerid", b"agi_channel",
                                                 b"agi_accountcode", b"agi_arg_1", b"junk", b""]),
                                env_value), max_size=8),
       keep_standard=st.booleans())
def test_agi_environment_block(fuzz_env, pairs, keep_standard):
    block = encode_env(Channel().env_block("/x", ["3331234567"]))[:-1] if keep_standard else b""
    block += b"".join(k + b": " + v.replace(b"\n", b"") + b"\n" for k, v in pairs) + b"\n"
    s = agi(fuzz_env, ["3331234567", "B"], block=block)
    assert s.agistatus in ("SUCCESS", "FAILURE")
    if s.agistatus == "SUCCESS":
        assert s.result == "ALLOW" and s.reason == "not_registered"  # the number decides, not the env
    else:
        assert not s.dialplan_allows


@settings(max_examples=25)
@given(text=st.text(max_size=300))
def test_config_never_crashes(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.conf"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        config_mod.load(str(path))
    except config_mod.ConfigError:
        pass


@settings(max_examples=10)
@given(text=st.text(max_size=200))
def test_agi_with_a_fuzzed_config_never_allows(tmp_path_factory, text):
    root = tmp_path_factory.mktemp("agicfg")
    env = Env(root)
    env.init()
    env.consult([("3331234567", "no")])
    env.conf.write_bytes(env.conf.read_bytes() + b"\n" + text.encode("utf-8", "surrogatepass"))
    try:
        config_mod.load(str(env.conf))
        valid = True
    except config_mod.ConfigError:
        valid = False
    s = agi(env, ["3331234567", "B"])
    if not valid:
        assert (s.result, s.reason) == ("BLOCK", "error")


csv_cell = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=15)


@settings(max_examples=30)
@given(rows=st.lists(st.lists(csv_cell, min_size=1, max_size=4), max_size=6),
       header=st.sampled_from(["number,status", "number,status,registration_date", "status,number", "x,y"]))
def test_consultation_import_lands_whole_or_not_at_all(fuzz_env, rows, header):
    from rpo_guard.sync import ImportFailed, import_consultation
    path = fuzz_env.root / "fuzz.csv"
    import csv
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write(header + "\n")
        csv.writer(fh).writerows(rows)
    conn = sqlite3.connect(fuzz_env.cfg.register_db)
    before = conn.execute("SELECT count(*) FROM consultations").fetchone()[0]
    try:
        result = import_consultation(fuzz_env.cfg, path, today_rome(), who="fuzz")
    except ImportFailed as exc:
        assert str(path) in str(exc)
        assert conn.execute("SELECT count(*) FROM consultations").fetchone()[0] == before
    else:
        after = conn.execute("SELECT count(*) FROM consultations").fetchone()[0]
        assert after - before == (0 if result.skipped_duplicate_file else result.rows)
    finally:
        conn.close()


@settings(max_examples=30)
@given(rows=st.lists(st.lists(csv_cell, min_size=1, max_size=7), max_size=5))
def test_consent_import_lands_whole_or_not_at_all(fuzz_env, rows):
    from rpo_guard.sync import ImportFailed, import_consents
    import csv
    path = fuzz_env.root / "fuzz-consents.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write("number,brand,kind,given_at,ends_at,channel,evidence\n")
        csv.writer(fh).writerows(rows)
    conn = sqlite3.connect(fuzz_env.cfg.register_db)
    before = conn.execute("SELECT count(*) FROM consents").fetchone()[0]
    try:
        import_consents(fuzz_env.cfg, path, who="fuzz")
    except ImportFailed as exc:
        assert str(path) in str(exc)
        assert conn.execute("SELECT count(*) FROM consents").fetchone()[0] == before
    finally:
        conn.close()
