"""`rpo-guard vicidial sync` against a real MariaDB holding VICIdial's DNC tables: both directions."""
import pytest
from click.testing import CliRunner

from conftest import days
from mariadb_support import mariadb  # noqa: F401  (the session's server)
from rpo_guard.cli.main import cli
from rpo_guard.register.lists import dnc_add, dnc_list, dnc_remove


@pytest.fixture
def vici(env, mariadb):  # noqa: F811
    name = mariadb.database()
    env.write_config(extra=mariadb.config(name, "CAMP1:Brand A, CAMP2:Brand B, CAMP3:Brand B"))
    env.init()
    conn = mariadb.connect(name)
    yield env, conn
    conn.close()


def sync(env, *args):
    r = CliRunner().invoke(cli, ["--config", str(env.conf), "vicidial", "sync", *args])
    assert r.exit_code == 0, r.output + (r.stderr if r.stderr_bytes else "")
    return r.stdout


def rows(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return sorted(cur.fetchall())


def entries(env):
    return sorted((e["number"], e["brand"]) for e in dnc_list(env.cfg))


def test_pull_maps_campaign_entries_to_their_brand_and_a_second_run_changes_nothing(vici):
    env, conn = vici
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO vicidial_dnc (phone_number) VALUES (%s)", [("3331000001",), ("0612345678",)])
        cur.executemany("INSERT INTO vicidial_campaign_dnc (phone_number, campaign_id) VALUES (%s, %s)",
                        [("3331000002", "CAMP1"), ("3331000003", "CAMP2"), ("3331000004", "OTHER"),
                         ("12", "CAMP1")])
    out = sync(env, "--pull")
    assert "pull: 5 added, 0 removed, 0 unchanged, 1 skipped" in out
    assert "vicidial_campaign_dnc CAMP1: '12'" in out and "campaign OTHER has no brand" in out
    assert entries(env) == [("+390612345678", ""), ("+393331000001", ""), ("+393331000002", "Brand A"),
                            ("+393331000003", "Brand B"), ("+393331000004", "")]
    # the entry mapped to Brand A refuses Brand A's calls and not Brand B's
    env.consult([("3331000002", "no")])
    a = CliRunner().invoke(cli, ["--config", str(env.conf), "check", "3331000002", "--brand", "Brand A"])
    b = CliRunner().invoke(cli, ["--config", str(env.conf), "check", "3331000002", "--brand", "Brand B"])
    assert "BLOCK internal_dnc" in a.stdout and "ALLOW not_registered" in b.stdout
    before = entries(env)
    assert "pull: 0 added, 0 removed, 5 unchanged, 1 skipped" in sync(env, "--pull")
    assert entries(env) == before
    # one new row in VICIdial: only it comes in; an entry removed in rpo_guard is not pulled back
    dnc_remove(env.cfg, "3331000001", "")
    with conn.cursor() as cur:
        cur.execute("INSERT INTO vicidial_campaign_dnc (phone_number, campaign_id) VALUES ('3331000005', 'CAMP2')")
    assert "pull: 1 added, 0 removed, 5 unchanged" in sync(env, "--pull")
    assert ("+393331000005", "Brand B") in entries(env) and ("+393331000001", "") not in entries(env)


def hopper_fill(conn, campaign):
    """The hopper's DNC filter (AST_VDhopper.pl with use_internal_dnc=Y, use_campaign_dnc=Y)."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM vicidial_hopper")
        cur.execute(
            "INSERT INTO vicidial_hopper (lead_id, campaign_id, status, list_id) "
            "SELECT lead_id, %s, 'READY', list_id FROM vicidial_list WHERE status = 'NEW' "
            "AND phone_number NOT IN (SELECT phone_number FROM vicidial_dnc) "
            "AND phone_number NOT IN (SELECT phone_number FROM vicidial_campaign_dnc WHERE campaign_id = %s)",
            (campaign, campaign))
    return [r[0] for r in rows(conn, "SELECT l.phone_number FROM vicidial_hopper h "
                                     "JOIN vicidial_list l USING (lead_id)")]


def test_push_puts_opt_outs_and_entries_in_vicidial_so_the_hopper_skips_them(vici):
    env, conn = vici
    leads = ["3331000010", "3331000011", "3331000012", "3331000013", "3331000014", "0612340000"]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO vicidial_list (status, list_id, phone_code, phone_number) "
                        "VALUES ('NEW', 101, '39', %s)", [(n,) for n in leads])
        cur.execute("INSERT INTO vicidial_dnc (phone_number) VALUES ('3331000014')")  # VICIdial's own
    assert hopper_fill(conn, "CAMP1") == sorted(set(leads) - {"3331000014"})
    dnc_add(env.cfg, "3331000010", "", "complaint")              # every brand -> vicidial_dnc
    dnc_add(env.cfg, "+39 333 1000011", "Brand B", "asked B")    # Brand B -> CAMP2 and CAMP3
    dnc_add(env.cfg, "3331000014", "", "also ours")              # VICIdial already has it
    dnc_add(env.cfg, "3331000015", "Brand C", "")                # no campaign: not pushed, said so
    env.consents([("3331000012", "Brand A", "optout", days(3), ""),   # -> CAMP1
                  ("0612340000", "", "optout", days(5), ""),          # everyone, then consent for Brand A
                  ("0612340000", "Brand A", "consent", days(1), ""),  #   -> CAMP2 and CAMP3 only
                  ("3331000013", "Brand B", "optout", days(9), ""),   # lifted by a later consent: not pushed
                  ("3331000013", "Brand B", "consent", days(2), "")])
    out = sync(env, "--push")
    assert rows(conn, "SELECT phone_number FROM vicidial_dnc") == [("3331000010",), ("3331000014",)]
    assert rows(conn, "SELECT phone_number, campaign_id FROM vicidial_campaign_dnc") == [
        ("0612340000", "CAMP2"), ("0612340000", "CAMP3"),
        ("3331000011", "CAMP2"), ("3331000011", "CAMP3"), ("3331000012", "CAMP1")]
    assert "push: 6 added, 0 removed, 0 unchanged" in out  # VICIdial's own row was there: not counted as added
    assert "brand Brand C has no campaign" in out
    assert hopper_fill(conn, "CAMP1") == ["0612340000", "3331000011", "3331000013"]
    assert hopper_fill(conn, "CAMP2") == ["3331000012", "3331000013"]
    # a second run changes nothing, and what was pushed does not come back as new entries
    before = entries(env)
    assert "push: 0 added, 0 removed, 7 unchanged" in sync(env, "--push")
    assert "pull: 0 added, 0 removed, 7 unchanged" in sync(env, "--pull")
    assert entries(env) == before
    # an entry removed in rpo_guard leaves VICIdial; VICIdial's own row stays
    dnc_remove(env.cfg, "3331000010", "")
    dnc_remove(env.cfg, "3331000014", "")
    assert "push: 0 added, 1 removed, 5 unchanged" in sync(env, "--push")
    assert rows(conn, "SELECT phone_number FROM vicidial_dnc") == [("3331000014",)]


def test_both_directions_in_one_run_and_again(vici):
    env, conn = vici
    with conn.cursor() as cur:
        cur.execute("INSERT INTO vicidial_campaign_dnc (phone_number, campaign_id) VALUES ('3331000020', 'CAMP2')")
    dnc_add(env.cfg, "3331000021", "Brand A", "")
    out = sync(env)
    assert "pull: 1 added" in out and "push: 2 added" in out
    # CAMP2's entry is Brand B's: it goes to Brand B's other campaign (CAMP3) too
    assert rows(conn, "SELECT phone_number, campaign_id FROM vicidial_campaign_dnc") == [
        ("3331000020", "CAMP2"), ("3331000020", "CAMP3"), ("3331000021", "CAMP1")]
    again = sync(env)
    assert "pull: 0 added, 0 removed, 3 unchanged" in again and "push: 0 added, 0 removed, 3 unchanged" in again


def test_a_wrong_password_names_the_database_and_the_user(vici, tmp_path):
    env, _conn = vici
    bad = tmp_path / "pw"
    bad.write_text("wrong\n")
    text = env.conf.read_text().replace(f"password_file = ", f"password_file = {bad}\n#")
    env.conf.write_text(text)
    r = CliRunner().invoke(cli, ["--config", str(env.conf), "vicidial", "sync"])
    assert r.exit_code == 1 and "as 'cron'" in r.stderr and "Access denied" in r.stderr
