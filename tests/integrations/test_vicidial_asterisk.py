"""The VICIdial drop-in (dialplan/rpo-guard-vicidial.conf) on a real Asterisk, in a dialplan
shaped as VICIdial generates it, for every kind of call VICIdial places.

The dialplan: [default] includes [vicidial-auto] (what ADMIN_keepalive_ALL.pl writes to
extensions-vicidial.conf): its `h` extension sends HANGUPCAUSE and DIALSTATUS to call_log
(DeadAGI ...call_log--HVcauses--...), and the carrier's Dialplan Entry, exactly as
docs/integrations/vicidial.md gives it, with only the trunk replaced by the sandbox's sink.
call_log (VICIdial's FastAGI_log.pl on port 4577) is stood in for by a small FastAGI
server that records each request.

The calls, as VICIdial's originate strings place them (AST_VDauto_dial.pl, vdc_db_query.php,
manager_send.php): an auto dial (caller name V<date><lead_id>, extension
<dial_prefix><phone_code><phone_number>), a manual dial (M...), a callback (dialed from the
hopper like an auto dial), a three-way call (DC..., the number as the agent typed it) and a
blind transfer (the customer's live channel redirected to the carrier extension).
"""
from __future__ import annotations

import socket
import threading
import time
from datetime import datetime

import pytest
from click.testing import CliRunner

from asterisk_calls import DIALPLAN, audit_row
from conftest import Env, agi_path, days
from fastagi_support import Server
from mariadb_support import mariadb  # noqa: F401  (the session's MariaDB)
from rpo_guard.cli.main import cli

pytestmark = pytest.mark.asterisk

ENERGIA, TELCO = "Energia Uno", "Telco Due"
ENERGIA_CID, TELCO_CID = "0212345678", "0298765432"
FREE, OPTED_OUT, ON_DNC, REGISTERED, NOT_CONSULTED = "3331234567", "3331234568", "3331234569", "3331234570", "3331234571"
CALLBACK_LEAD = "3331234572"
FIXED_FREE = "0612345678"


class CallLog:
    """Stands in for VICIdial's call_log FastAGI (FastAGI_log.pl): records each request's
    script (the part after the port: call_log or call_log--HVcauses--...) and caller name."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests: list[dict] = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                env, buf = {}, b""
                conn.settimeout(5)
                try:
                    while b"\n\n" not in buf:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        buf += chunk
                except OSError:
                    pass
                for line in buf.decode(errors="replace").split("\n\n")[0].splitlines():
                    key, _, value = line.partition(": ")
                    env[key] = value
                self.requests.append(env)

    def hangups(self, caller_name: str) -> list[str]:
        """The HVcauses requests of the call whose caller name is ``caller_name``."""
        return [r["agi_network_script"] for r in self.requests
                if r.get("agi_calleridname") == caller_name and "HVcauses" in r.get("agi_network_script", "")]

    def close(self):
        self._stop = True
        self.sock.close()


def carrier_entry(call_log_port: int) -> str:
    """The carrier's Dialplan Entry of docs/integrations/vicidial.md (the trunk is the sink)."""
    lines = []
    for prefix, brand, cid in (("71", ENERGIA, ENERGIA_CID), ("72", TELCO, TELCO_CID)):
        p = f"_{prefix}X."
        lines += [f"exten => {p},1,AGI(agi://127.0.0.1:{call_log_port}/call_log)",
                  f"exten => {p},n,Gosub(rpo-guard-vicidial,s,1(${{EXTEN:2}},{brand},{cid}))",
                  f'exten => {p},n,ExecIf($["${{GOSUB_RETVAL}}" != "ALLOW"]?Hangup(${{RPO_HANGUPCAUSE}}))',
                  f"exten => {p},n,Dial(${{ITTRUNK}}/${{EXTEN:2}}@sandbox-sink,,tTo)",
                  f"exten => {p},n,Hangup()"]
    # a carrier entry without the caller-ID argument: the campaign's CID goes out as VICIdial set it
    lines += [f"exten => _73X.,1,AGI(agi://127.0.0.1:{call_log_port}/call_log)",
              f"exten => _73X.,n,Gosub(rpo-guard-vicidial,s,1(${{EXTEN:2}},{ENERGIA}))",
              'exten => _73X.,n,ExecIf($["${GOSUB_RETVAL}" != "ALLOW"]?Hangup(${RPO_HANGUPCAUSE}))',
              "exten => _73X.,n,Dial(${ITTRUNK}/${EXTEN:2}@sandbox-sink,,tTo)",
              "exten => _73X.,n,Hangup()"]
    return "\n".join(lines) + "\n"


def vicidial_dialplan(call_log_port: int, fastagi_port: int, via: str) -> str:
    inc = "".join(f"#include {DIALPLAN / n}\n" for n in ("rpo-guard.conf", "rpo-guard-fastagi.conf",
                                                          "rpo-guard-vicidial.conf"))
    return inc + f"""
[globals]
RPO_GUARD_AGI={agi_path()}
RPO_GUARD_FASTAGI=agi://127.0.0.1:{fastagi_port}/rpo_guard
RPO_GUARD_VIA={via}
ITTRUNK=Local

; --- as ADMIN_keepalive_ALL.pl generates extensions-vicidial.conf
[vicidial-auto]
exten => h,1,DeadAGI(agi://127.0.0.1:{call_log_port}/call_log--HVcauses--PRI-----NODEBUG-----${{HANGUPCAUSE}}-----${{DIALSTATUS}}-----${{DIALEDTIME}}-----${{ANSWEREDTIME}})
; VICIDIAL Carrier: ITCARRIER - Italian trunk
{carrier_entry(call_log_port)}
; --- extensions.conf
[default]
include => vicidial-auto
exten => 8368,1,Answer()
 same => n,Wait(30)
exten => _8600XXX,1,Answer()
 same => n,Wait(30)

; --- test plumbing: the originate's caller name (VICIdial's call id) and the rpo_guard
; configuration of the process AGI (Asterisk's environment, as under systemd)
[vici-originate]
exten => s,1,Set(CALLERID(name)=${{VQUERYCID}})
 same => n,Set(ENV(RPO_GUARD_CONFIG)=${{RPO_TEST_CONFIG}})
 same => n,Goto(default,${{VEXTEN}},1)

; a customer already talking to an agent (a call that was allowed), then transferred
[vici-customer]
exten => s,1,Set(CALLERID(name)=${{VQUERYCID}})
 same => n,Set(ENV(RPO_GUARD_CONFIG)=${{RPO_TEST_CONFIG}})
 same => n,Gosub(rpo-guard-vicidial,s,1({FREE},{ENERGIA},{ENERGIA_CID}))
 same => n,Set(BEFORE_TRANSFER=${{GOSUB_RETVAL}})
 same => n,Wait(30)
"""


RECORD = ("RPO_RESULT", "RPO_REASON", "RPO_AUDIT_ID", "GOSUB_RETVAL", "DIALSTATUS", "HANGUPCAUSE", "BEFORE_TRANSFER")


def call_id(kind: str, lead_id: int) -> str:
    """VICIdial's call ids: V/M + mmddhhmmss + lead id on 10 digits; DC + epoch + user for 3-way."""
    if kind == "DC":
        return f"DC{int(time.time())}6666"
    return f"{kind}{datetime.now():%m%d%H%M%S}{lead_id:010d}"


def originate(sandbox, env, exten: str, caller_name: str, campaign_cid: str = ENERGIA_CID):
    return sandbox.originate("s", "vici-originate", callerid=campaign_cid, record=RECORD,
                             variables={"VQUERYCID": caller_name, "VEXTEN": exten,
                                        "RPO_TEST_CONFIG": str(env.conf)})


@pytest.fixture(scope="module")
def vici_env(tmp_path_factory):
    env = Env(tmp_path_factory.mktemp("vicidial"))
    env.write_config(conduct="calling_hours = off\ncaller_id_check = on\n")
    env.init()
    env.consult([(n, "non iscritto") for n in (FREE, OPTED_OUT, ON_DNC, CALLBACK_LEAD, FIXED_FREE)]
                + [(REGISTERED, "iscritto")], days_ago=0)
    env.consents([(OPTED_OUT, ENERGIA, "optout", days(1), "")])
    for args in (["dnc", "add", ON_DNC, "--reason", "asked the agent"],
                 ["caller-id", "add", ENERGIA_CID, "--brand", ENERGIA],
                 ["caller-id", "add", TELCO_CID, "--brand", TELCO]):
        r = CliRunner().invoke(cli, ["--config", str(env.conf), *args])
        assert r.exit_code == 0, r.output
    server = Server(env.conf)
    log = CallLog()
    yield env, server, log
    server.stop()
    log.close()


def check_refused(sandbox, env, log, call, outcome, caller_name, reason, barred=True):
    assert sandbox.sink_hits(call) == [], outcome
    assert (outcome["RPO_RESULT"], outcome["RPO_REASON"], outcome["GOSUB_RETVAL"]) == ("BLOCK", reason, "BLOCK"), outcome
    cause, dialstatus = ("1", "CHANUNAVAIL_DNC") if barred else ("21", "CONGESTION")
    assert (outcome["HANGUPCAUSE"], outcome["DIALSTATUS"]) == (cause, dialstatus), outcome
    row = audit_row(env, outcome["RPO_AUDIT_ID"])
    assert row is not None and (row["decision"], row["reason"]) == ("BLOCK", reason), row
    # what VICIdial's call_log receives from its h extension: the cause and dial status it files the lead by
    wait_until(lambda: log.hangups(caller_name))
    assert log.hangups(caller_name) == [
        f"call_log--HVcauses--PRI-----NODEBUG-----{cause}-----{dialstatus}----------"], log.hangups(caller_name)


def check_allowed(sandbox, env, log, call, outcome, caller_name, reason, trunk_number):
    assert (outcome["RPO_RESULT"], outcome["RPO_REASON"]) == ("ALLOW", reason), outcome
    assert sandbox.sink_hits(call) == [trunk_number]
    assert outcome["DIALSTATUS"] == "ANSWER"
    assert audit_row(env, outcome["RPO_AUDIT_ID"])["decision"] == "ALLOW"
    wait_until(lambda: log.hangups(caller_name))
    assert "-----ANSWER-----" in log.hangups(caller_name)[0]


def wait_until(predicate, timeout=10):
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        time.sleep(0.05)


@pytest.mark.parametrize("via", ["agi", "fastagi"])
def test_every_vicidial_call_type_goes_through_the_check(asterisk_sandbox, vici_env, via):
    env, server, log = vici_env
    sb = asterisk_sandbox
    sb.load_dialplan(vicidial_dialplan(log.port, server.port, via))
    cases = [
        # (kind, extension VICIdial dials, campaign CID, expected)
        ("V", "7139" + FREE, "0000000000", ("ALLOW", "not_registered", "39" + FREE)),     # auto dial
        ("V", "7139" + OPTED_OUT, ENERGIA_CID, ("BLOCK", "optout", True)),                 # auto dial
        ("V", "7239" + OPTED_OUT, TELCO_CID, ("ALLOW", "not_registered", "39" + OPTED_OUT)),  # other brand
        ("M", "7139" + ON_DNC, ENERGIA_CID, ("BLOCK", "internal_dnc", True)),              # manual dial
        ("M", "7139" + REGISTERED, ENERGIA_CID, ("BLOCK", "rpo_registered", True)),        # manual dial
        ("V", "7139" + NOT_CONSULTED, ENERGIA_CID, ("BLOCK", "not_consulted", False)),     # callback, auto
        ("DC", "71" + FIXED_FREE, ENERGIA_CID, ("ALLOW", "not_registered", FIXED_FREE)),   # three-way
        ("DC", "71" + ON_DNC, ENERGIA_CID, ("BLOCK", "internal_dnc", True)),               # three-way
        ("V", "7339" + FREE, "0000000000", ("BLOCK", "caller_id_not_allowed", False)),    # no CID argument
        ("V", "7339" + FREE, ENERGIA_CID, ("ALLOW", "not_registered", "39" + FREE)),
        ("M", "71" + "12", ENERGIA_CID, ("BLOCK", "invalid_number", True)),
    ]
    placed = []
    for i, (kind, exten, cid, expect) in enumerate(cases):
        name = call_id(kind, 1000 + i) if kind != "DC" else f"DC{int(time.time())}{i:04d}"
        placed.append((originate(sb, env, exten, name, cid), name, expect))
    for call, name, (decision, reason, extra) in placed:
        outcome = sb.wait_for(call, timeout=60)
        if decision == "ALLOW":
            check_allowed(sb, env, log, call, outcome, name, reason, extra)
        else:
            check_refused(sb, env, log, call, outcome, name, reason, barred=extra)


@pytest.mark.parametrize("via", ["agi", "fastagi"])
def test_a_blind_transfer_to_a_barred_number_is_refused(asterisk_sandbox, vici_env, via):
    """VICIdial's blind transfer redirects the customer's channel to <prefix><number>@default:
    the channel already passed a check (GOSUB_RETVAL=ALLOW); the new number is checked afresh."""
    env, server, log = vici_env
    sb = asterisk_sandbox
    sb.load_dialplan(vicidial_dialplan(log.port, server.port, via))
    name = call_id("V", 2000 if via == "agi" else 2001)
    call = sb.originate("s", "vici-customer", callerid=ENERGIA_CID, record=RECORD,
                        variables={"VQUERYCID": name, "RPO_TEST_CONFIG": str(env.conf)})
    far = None
    end = time.monotonic() + 30
    while far is None and time.monotonic() < end:
        found = [c for c in sb.channels(call) if c.endswith(";2")]
        if found and "Wait" in sb.cli(f"core show channel {found[0]}"):
            far = found[0]
        time.sleep(0.05)
    assert far is not None, sb.channels()
    sb.cli(f"channel redirect {far} default,7139{ON_DNC},1")
    outcome = sb.wait_for(call, timeout=60)
    assert outcome["BEFORE_TRANSFER"] == "ALLOW"
    check_refused(sb, env, log, call, outcome, name, "internal_dnc")


def test_the_hopper_case_a_lead_opted_out_after_the_hopper_was_filled(asterisk_sandbox, vici_env, mariadb,  # noqa: F811
                                                                     tmp_path):
    """VICIdial checks its DNC lists when it fills the hopper, not when it dials: a lead loaded
    before the opt-out is dialed anyway. The check at dial time refuses it; after
    `rpo-guard vicidial sync --push` the hopper no longer loads it."""
    env, server, log = vici_env
    sb = asterisk_sandbox
    sb.load_dialplan(vicidial_dialplan(log.port, server.port, "agi"))
    lead_number = "3331234580"
    env.consult([(lead_number, "non iscritto")], days_ago=0, name="hopper.csv")
    name = mariadb.database()
    conn = mariadb.connect(name)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO vicidial_campaigns (campaign_id, campaign_name, dial_prefix, campaign_cid,"
                        " use_internal_dnc, use_campaign_dnc) VALUES ('CAMP1', 'Energia', '71', %s, 'Y', 'Y')",
                        (ENERGIA_CID,))
            cur.execute("INSERT INTO vicidial_list (status, list_id, phone_code, phone_number)"
                        " VALUES ('NEW', 101, '39', %s)", (lead_number,))
        assert hopper_fill(conn, "CAMP1") == [lead_number]
        # the person opts out after the hopper was filled
        conf = tmp_path / "with-vicidial.conf"
        conf.write_text(env.conf.read_text() + "\n" + mariadb.config(name, f"CAMP1:{ENERGIA}"))
        r = CliRunner().invoke(cli, ["--config", str(conf), "dnc", "add", lead_number, "--reason", "opted out"])
        assert r.exit_code == 0, r.output
        # AST_VDauto_dial.pl takes the lead from the hopper and originates the call
        with conn.cursor() as cur:
            cur.execute("SELECT h.lead_id, c.dial_prefix, l.phone_code, l.phone_number, c.campaign_cid"
                        " FROM vicidial_hopper h JOIN vicidial_list l USING (lead_id)"
                        " JOIN vicidial_campaigns c ON c.campaign_id = h.campaign_id WHERE h.status = 'READY'")
            lead_id, prefix, phone_code, phone, cid = cur.fetchone()
            cur.execute("DELETE FROM vicidial_hopper WHERE lead_id = %s", (lead_id,))
        caller_name = call_id("V", lead_id)
        call = originate(sb, env, f"{prefix}{phone_code}{phone}", caller_name, cid)
        outcome = sb.wait_for(call, timeout=60)
        check_refused(sb, env, log, call, outcome, caller_name, "internal_dnc")
        # pushed back to VICIdial, the number stays out of the next hopper fill
        r = CliRunner().invoke(cli, ["--config", str(conf), "vicidial", "sync", "--push"])
        assert r.exit_code == 0, r.output
        with conn.cursor() as cur:
            cur.execute("SELECT phone_number FROM vicidial_dnc")
            assert (lead_number,) in cur.fetchall()
        assert hopper_fill(conn, "CAMP1") == []
    finally:
        conn.close()


def hopper_fill(conn, campaign):
    """The hopper's DNC filter for a campaign with use_internal_dnc=Y and use_campaign_dnc=Y
    (AST_VDhopper.pl): NEW leads not on vicidial_dnc nor on the campaign's list."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO vicidial_hopper (lead_id, campaign_id, status, list_id) "
            "SELECT lead_id, %s, 'READY', list_id FROM vicidial_list WHERE status = 'NEW' "
            "AND lead_id NOT IN (SELECT lead_id FROM vicidial_hopper) "
            "AND phone_number NOT IN (SELECT phone_number FROM vicidial_dnc) "
            "AND phone_number NOT IN (SELECT phone_number FROM vicidial_campaign_dnc WHERE campaign_id = %s)",
            (campaign, campaign))
        cur.execute("SELECT l.phone_number FROM vicidial_hopper h JOIN vicidial_list l USING (lead_id)"
                    " WHERE h.status = 'READY'")
        return [r[0] for r in cur.fetchall()]
