"""`rpo-guard check` and the AGI agree, on one decision table over real data.

The data is loaded through the real importers into real SQLite files; older
consultation batches are moved back in time with SQL, as if they had been
imported on earlier days (the importer itself refuses expired results).
"""
import json

import pytest
from click.testing import CliRunner

from conftest import agi_path
from rpo_guard.cli.main import cli
from rpo_guard.rules.decision import REASONS
from rpo_guard.harness import Channel, run_process_agi
from decision_table import BRAND, OTHER, TABLE, table_by_day, table_env  # noqa: F401  (fixtures)


def check_json(env, dialed, brand):
    result = CliRunner().invoke(cli, ["--config", str(env.conf), "check", dialed, "--brand", brand, "--json"])
    assert result.exit_code in (0, 1), result.output
    out = json.loads(result.output)
    assert result.exit_code == (0 if out["decision"] == "ALLOW" else 1)
    return out


@pytest.mark.parametrize("dialed, brand, decision, reason", TABLE)
def test_check_and_agi_agree(table_env, dialed, brand, decision, reason):
    out = check_json(table_env, dialed, brand)
    assert (out["decision"], out["reason"]) == (decision, reason)
    session = run_process_agi(agi_path(), [dialed, brand], Channel(extension="3331234567"),
                              env=table_env.agi_env)
    assert (session.agistatus, session.result, session.reason) == ("SUCCESS", decision, reason)
    assert session.dialplan_allows == (decision == "ALLOW")


def test_table_covers_every_reason_code():
    from rpo_guard.rules.decision import (ATTEMPT_CAP, CALLBACK_REQUEST, CALLER_ID_NOT_ALLOWED, CONSENT_REQUIRED,
                                          ERROR, OUTSIDE_CALLING_HOURS, REPLICA_STALE, SILENT_CALL_COOLDOWN)
    covered = {row[3] for row in TABLE} | {ERROR}  # error: tests/test_agi.py (missing, corrupt database)
    covered |= {REPLICA_STALE}  # fleet mode only: tests/rules/test_replica_stale.py, tests/fleet/
    # the conduct-code reasons have their own tables: tests/test_conduct_*.py
    conduct = {CALLBACK_REQUEST, CALLER_ID_NOT_ALLOWED, OUTSIDE_CALLING_HOURS, SILENT_CALL_COOLDOWN}
    # the brand policies' too: tests/rules/test_brand_policies.py, tests/test_brand_policies_e2e.py
    brand = {CONSENT_REQUIRED, ATTEMPT_CAP}
    assert covered == set(REASONS) - conduct - brand


def test_check_json_names_the_number_and_basis(table_env):
    out = check_json(table_env, "06 1234 5678", BRAND)
    assert out["number"] == "+390612345678"
    assert out["basis"]["kind"] == "consultation" and out["basis"]["batch_id"]


def test_check_exit_2_on_configuration_error(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[rules]\nvalidity_days = -1\n")
    result = CliRunner().invoke(cli, ["--config", str(bad), "check", "3331234567"])
    assert result.exit_code == 2
    assert "validity_days" in result.output


def test_check_what_if_in_the_future(table_env):
    from datetime import datetime, timedelta
    later = (datetime.now() + timedelta(days=20)).strftime("%Y-%m-%dT10:00")
    result = CliRunner().invoke(cli, ["--config", str(table_env.conf), "check", "0612345678",
                                      "--at", later, "--json"])
    assert json.loads(result.output)["reason"] == "consultation_expired"
    assert result.exit_code == 1
