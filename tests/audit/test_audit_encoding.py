"""The per-call JSON writer and SHA-256 of audit_log give exactly the bytes of json/hashlib,
and so does the json-module encoder a long-running writer switches to (use_json_module)."""
from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

import rpo_guard.audit.log as audit_log
from rpo_guard.audit.log import COLUMNS, basis_text, canonical, row_hash, values_of


def both_encoders():
    """Run the loop body with the small writer, then with use_json_module()'s encoders."""
    saved = audit_log._dump_basis, audit_log._dump_row
    try:
        audit_log._dump_basis = audit_log._dump_row = None
        yield "writer"
        audit_log.use_json_module()
        assert audit_log._dump_row is not None
        yield "json"
    finally:
        audit_log._dump_basis, audit_log._dump_row = saved

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(),
                    st.floats(allow_nan=False, allow_infinity=False))
nested = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                       st.dictionaries(st.text(), kids, max_size=4)), max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(), nested, max_size=6))
def test_basis_text_is_json_dumps_sorted(basis):
    for _ in both_encoders():
        assert basis_text(basis) == json.dumps(basis, sort_keys=True)


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=1), st.fixed_dictionaries({c: st.one_of(st.none(), st.text()) for c in COLUMNS}),
       st.one_of(st.none(), st.floats(), st.integers(-10**6, 10**6)), st.text(alphabet="0123456789abcdef", min_size=64,
                                                                            max_size=64))
def test_canonical_and_hash_are_json_and_hashlib(row_id, row, latency, prev):
    row = dict(row, latency_ms=latency, basis={"kind": row["reason"], "n": latency})
    try:
        json.dumps(row["basis"], allow_nan=False)
    except ValueError:
        row["basis"] = {}
    for _ in both_encoders():
        values = values_of(row)
        expect = json.dumps([row_id, *values], ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        assert canonical(row_id, values) == expect
        assert row_hash(prev, row_id, values) == hashlib.sha256(prev.encode() + b"\n" + expect).hexdigest()


def test_unusual_values_fall_back_to_the_json_module():
    class Code(int):
        pass
    for _ in both_encoders():
        check_unusual(Code)


def check_unusual(Code):
    assert basis_text({"id": Code(4)}) == json.dumps({"id": Code(4)}, sort_keys=True)
    assert basis_text({1: "x"}) == json.dumps({1: "x"}, sort_keys=True)
    assert basis_text({"x": float("nan")}) == json.dumps({"x": float("nan")}, sort_keys=True)


def test_values_of_stores_other_values_as_text_and_latency_as_a_finite_float():
    row = {c: f"v-{c}" for c in COLUMNS}
    row.update(uniqueid=1795339001.5, accountcode=7, latency_ms="2.5", basis={"b": 1, "a": [2]})
    values = dict(zip(COLUMNS, values_of(row)))
    assert values["uniqueid"] == "1795339001.5" and values["accountcode"] == "7"
    assert values["latency_ms"] == 2.5 and values["basis"] == '{"a": [2], "b": 1}'
    assert values["at"] == "v-at" and values["via"] == "v-via"
    assert values_of({"latency_ms": float("inf")})[COLUMNS.index("latency_ms")] is None
    assert values_of({}) == [("{}" if c == "basis" else None) for c in COLUMNS]


def test_without_jsons_c_encoder_the_json_module_path_is_its_plain_encode(monkeypatch):
    import json.encoder
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    enc = json.JSONEncoder(sort_keys=True)
    assert audit_log._reused(enc) == enc.encode
    saved = audit_log._dump_basis, audit_log._dump_row
    try:
        audit_log.use_json_module()
        assert basis_text({"b": 1, "a": "é"}) == json.dumps({"b": 1, "a": "é"}, sort_keys=True)
    finally:
        audit_log._dump_basis, audit_log._dump_row = saved
