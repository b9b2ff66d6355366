"""VICIdial's DNC lists and rpo_guard's, kept in step both ways (``rpo-guard vicidial sync``).

VICIdial (MariaDB/MySQL, PyMySQL) keeps a system list ``vicidial_dnc
(phone_number)`` and per-campaign lists ``vicidial_campaign_dnc
(phone_number, campaign_id)``; its hopper skips a lead whose number is on
them when the campaign has ``use_internal_dnc`` / ``use_campaign_dnc`` = Y.

* **pull**: every row of those tables not seen before becomes an entry of
  rpo_guard's do-not-contact list: the system list for every brand, a
  campaign's list for the brand ``[vicidial] campaign_brands`` maps it to
  (an unmapped campaign's for every brand: fail closed).
* **push**: rpo_guard's active do-not-contact entries and opt-outs (not
  followed by a consent) go into those tables: an entry for every brand
  into ``vicidial_dnc``, a brand's into ``vicidial_campaign_dnc`` for each
  of its campaigns; what rpo_guard pushed and no longer holds is taken out
  again (never a row VICIdial had of its own).

What was pulled and pushed is remembered in ``<data_dir>/vicidial.db``, so
both directions are incremental and idempotent: a second run changes
nothing, an entry removed from rpo_guard's list is not pulled back, a row
rpo_guard pushed is not pulled back as a new entry. VICIdial stores numbers
as dialed in the country (``phone_number`` without ``phone_code``): they are
read in ``[numbers] default_region`` and pushed as national significant numbers.
"""
from __future__ import annotations

import getpass
import os
import sqlite3
from datetime import datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo

STATE_FILE = "vicidial.db"
_STATE = (
    "CREATE TABLE IF NOT EXISTS pulled (phone_number TEXT NOT NULL, campaign_id TEXT NOT NULL,"
    " number TEXT, brand TEXT, dnc_id INTEGER, pulled_at TEXT NOT NULL, PRIMARY KEY (phone_number, campaign_id))",
    # owned = 1: rpo_guard inserted the row (and may delete it); 0: VICIdial had it already
    "CREATE TABLE IF NOT EXISTS pushed (phone_number TEXT NOT NULL, campaign_id TEXT NOT NULL,"
    " number TEXT NOT NULL, brand TEXT NOT NULL, why TEXT NOT NULL, owned INTEGER NOT NULL,"
    " pushed_at TEXT NOT NULL, PRIMARY KEY (phone_number, campaign_id))",
    "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, direction TEXT NOT NULL, at TEXT NOT NULL,"
    " by TEXT NOT NULL, added INTEGER NOT NULL, removed INTEGER NOT NULL, skipped INTEGER NOT NULL)",
)


class VicidialError(Exception):
    """VICIdial's database cannot be reached or read; the message says which setting to look at."""


class Result(NamedTuple):
    direction: str
    added: int          # pull: new do-not-contact entries; push: rows inserted into VICIdial
    removed: int        # push: rows rpo_guard had pushed and took out again
    known: int          # rows already remembered (nothing to do)
    skipped: list[str]  # rows that could not be read (the reason each)
    notes: list[str]

    def summary(self) -> str:
        text = (f"{self.direction}: {self.added} added, {self.removed} removed, {self.known} unchanged, "
                f"{len(self.skipped)} skipped")
        return "\n".join([text] + [f"  skipped: {s}" for s in self.skipped[:20]]
                         + ([f"  ... {len(self.skipped) - 20} more"] if len(self.skipped) > 20 else [])
                         + [f"  note: {n}" for n in self.notes])


def connect(cfg):
    """A PyMySQL connection to VICIdial's database, as ``[vicidial]`` says."""
    try:
        import pymysql
    except ImportError:
        raise VicidialError("PyMySQL is not installed: pip install 'rpo_guard[vicidial]'") from None
    password = ""
    if cfg.vicidial_password_file:
        try:
            with open(cfg.vicidial_password_file, encoding="utf-8") as fh:
                password = fh.readline().rstrip("\r\n")
        except OSError as exc:
            raise VicidialError(f"[vicidial] password_file: cannot read {cfg.vicidial_password_file}: "
                                f"{exc.strerror}") from None
    where = cfg.vicidial_socket or f"{cfg.vicidial_host}:{cfg.vicidial_port}"
    try:
        kw = {"unix_socket": cfg.vicidial_socket} if cfg.vicidial_socket else {
            "host": cfg.vicidial_host, "port": cfg.vicidial_port}
        return pymysql.connect(user=cfg.vicidial_user, password=password, database=cfg.vicidial_database,
                               charset="utf8mb4", autocommit=False, connect_timeout=10, **kw)
    except pymysql.MySQLError as exc:
        raise VicidialError(f"VICIdial database {cfg.vicidial_database!r} at {where} as {cfg.vicidial_user!r}: "
                            f"{exc.args[-1] if exc.args else exc}") from None


def _open(cfg):
    """rpo.db (the register, schema checked) with vicidial.db attached as ``vici``."""
    from rpo_guard.register.schema import open_db

    db = open_db(cfg.register_db, cfg.file_mode, cfg.group)
    conn = db.conn
    state = os.path.join(cfg.data_dir, STATE_FILE)
    if not os.path.exists(state):
        from rpo_guard import perms
        perms.create_file(state, cfg.file_mode, cfg.group)
    conn.execute("ATTACH DATABASE ? AS vici", (state,))
    for sql in _STATE:
        conn.execute(sql.replace("CREATE TABLE IF NOT EXISTS ", "CREATE TABLE IF NOT EXISTS vici.", 1))
    conn.commit()
    return db


def _now(cfg) -> str:
    return datetime.now(ZoneInfo(cfg.timezone)).isoformat(timespec="seconds")


def _record_run(conn, cfg, r: Result, who: str) -> None:
    conn.execute("INSERT INTO vici.runs (direction, at, by, added, removed, skipped) VALUES (?,?,?,?,?,?)",
                 (r.direction, _now(cfg), who, r.added, r.removed, len(r.skipped)))


# --------------------------------------------------------------------------- pull

def pull(cfg, vconn, who: str | None = None) -> Result:
    """VICIdial's DNC rows not seen before -> rpo_guard's do-not-contact list (one transaction)."""
    from rpo_guard.rules.fastnum import bulk_normalizer
    from rpo_guard.rules.numbers import InvalidNumber

    who = who or getpass.getuser()
    brands = dict(cfg.vicidial_campaign_brands)
    norm = bulk_normalizer(cfg.strip_prefixes, cfg.default_region)
    db = _open(cfg)
    conn = db.conn
    try:
        seen = {(p, c) for p, c in conn.execute(
            "SELECT phone_number, campaign_id FROM vici.pulled UNION SELECT phone_number, campaign_id FROM vici.pushed")}
        now = _now(cfg)
        added = known = 0
        skipped, unmapped = [], set()
        try:
            with vconn.cursor() as cur:
                cur.execute("SELECT phone_number, '' FROM vicidial_dnc UNION ALL "
                            "SELECT phone_number, campaign_id FROM vicidial_campaign_dnc")
                rows = cur.fetchall()
            vconn.rollback()  # end the read transaction
        except Exception as exc:
            raise VicidialError(f"reading VICIdial's DNC tables: {exc}") from None
        with conn:
            for phone, campaign in rows:
                phone, campaign = (phone or "").strip(), (campaign or "").strip()
                if (phone, campaign) in seen:
                    known += 1
                    continue
                table = f"vicidial_campaign_dnc {campaign}" if campaign else "vicidial_dnc"
                try:
                    e164 = norm(phone)
                except InvalidNumber as exc:
                    skipped.append(f"{table}: {phone!r}: {exc}")
                    continue
                brand = brands.get(campaign, "") if campaign else ""
                if campaign and campaign not in brands:
                    unmapped.add(campaign)
                cur = conn.execute(
                    "INSERT INTO dnc (number, brand, reason, added_by, added_at, source_file) VALUES (?,?,?,?,?,?)"
                    " ON CONFLICT (number, brand) WHERE removed_at IS NULL DO NOTHING",
                    (e164, brand, f"VICIdial {table}", who, now, f"vicidial:{table}"))
                added += cur.rowcount
                conn.execute("INSERT INTO vici.pulled (phone_number, campaign_id, number, brand, dnc_id, pulled_at)"
                             " VALUES (?,?,?,?,?,?)", (phone, campaign, e164, brand,
                                                       cur.lastrowid if cur.rowcount else None, now))
                seen.add((phone, campaign))
            notes = [f"campaign {c} has no brand in [vicidial] campaign_brands: its entries apply to every brand"
                     for c in sorted(unmapped)]
            result = Result("pull", added, 0, known, skipped, notes)
            _record_run(conn, cfg, result, who)
        return result
    finally:
        db.conn.close()


# --------------------------------------------------------------------------- push

def _national(e164: str, cache: dict) -> str:
    """The national significant number VICIdial keeps in phone_number (Italy: with its leading 0)."""
    nsn = cache.get(e164)
    if nsn is None:
        import phonenumbers
        nsn = cache[e164] = phonenumbers.national_significant_number(phonenumbers.parse(e164, None))
    return nsn


def wanted(cfg, conn, unmapped: set | None = None) -> dict[tuple[str, str], tuple[str, str, str]]:
    """(phone_number, campaign_id '' = system list) -> (E.164, brand, why) that VICIdial should hold;
    the brands with entries but no campaign in the mapping are added to ``unmapped``."""
    campaigns: dict[str, list[str]] = {}
    for campaign, brand in cfg.vicidial_campaign_brands:
        campaigns.setdefault(brand, []).append(campaign)
    all_campaigns = [c for c, _b in cfg.vicidial_campaign_brands]
    cache: dict[str, str] = {}
    out: dict[tuple[str, str], tuple[str, str, str]] = {}

    def put(e164, brand, why, only=None):
        targets = [""] if brand == "" and only is None else (only if only is not None else campaigns.get(brand, []))
        if brand and only is None and not targets and unmapped is not None:
            unmapped.add(brand)
        for campaign in targets:
            out.setdefault((_national(e164, cache), campaign), (e164, brand, why))

    # entries pulled from a VICIdial list are wanted too: in the brand's other campaigns (the list they
    # came from already holds them, and push skips what was pulled)
    for e164, brand in conn.execute("SELECT number, brand FROM dnc WHERE removed_at IS NULL"):
        put(e164, brand, "dnc")
    # Opt-outs not followed by a consent for the brand (a callback request is temporary: it does not lift one).
    events: dict[str, list] = {}
    for number, brand, kind, given in conn.execute(
            "SELECT number, brand, kind, given_on FROM consents WHERE kind IN ('optout', 'consent') AND number IN"
            " (SELECT number FROM consents WHERE kind = 'optout') ORDER BY number"):
        events.setdefault(number, []).append((brand, kind, given))
    for number, evs in events.items():
        for brand, kind, given in evs:
            if kind != "optout":
                continue
            lifted = {b for b, k, g in evs if k == "consent" and g > given and (brand == "" or b == brand)}
            if brand and not lifted:
                put(number, brand, "optout")
            elif not brand and not lifted:
                put(number, "", "optout")
            elif not brand:  # an opt-out from everyone, later consents for some brands: the other campaigns
                put(number, "", "optout", only=[c for c in all_campaigns if dict(cfg.vicidial_campaign_brands)[c]
                                                 not in lifted])
    return out


def push(cfg, vconn, who: str | None = None) -> Result:
    """rpo_guard's do-not-contact entries and opt-outs -> VICIdial's DNC tables."""
    who = who or getpass.getuser()
    db = _open(cfg)
    conn = db.conn
    try:
        unmapped: set[str] = set()
        want = wanted(cfg, conn, unmapped)
        pulled = {(p, c) for p, c in conn.execute("SELECT phone_number, campaign_id FROM vici.pulled")}
        have = {(p, c): owned for p, c, owned in conn.execute(
            "SELECT phone_number, campaign_id, owned FROM vici.pushed")}
        now = _now(cfg)
        added = removed = known = 0
        notes = []
        conn.execute("BEGIN")
        try:
            with vconn.cursor() as cur:
                for key, (e164, brand, why) in want.items():
                    if key in have or key in pulled:
                        known += 1
                        continue
                    phone, campaign = key
                    if campaign:
                        n = cur.execute("INSERT IGNORE INTO vicidial_campaign_dnc (phone_number, campaign_id)"
                                        " VALUES (%s, %s)", (phone, campaign))
                    else:
                        n = cur.execute("INSERT IGNORE INTO vicidial_dnc (phone_number) VALUES (%s)", (phone,))
                    added += n
                    conn.execute("INSERT INTO vici.pushed (phone_number, campaign_id, number, brand, why, owned,"
                                 " pushed_at) VALUES (?,?,?,?,?,?,?)", (phone, campaign, e164, brand, why, n, now))
                for key, owned in have.items():
                    if key in want:
                        continue
                    phone, campaign = key
                    if owned:
                        if campaign:
                            removed += cur.execute("DELETE FROM vicidial_campaign_dnc WHERE phone_number = %s"
                                                   " AND campaign_id = %s", (phone, campaign))
                        else:
                            removed += cur.execute("DELETE FROM vicidial_dnc WHERE phone_number = %s", (phone,))
                    conn.execute("DELETE FROM vici.pushed WHERE phone_number = ? AND campaign_id = ?", key)
            result = Result("push", added, removed, known, [], notes)
            _record_run(conn, cfg, result, who)
            vconn.commit()
        except Exception as exc:
            conn.execute("ROLLBACK")
            try:
                vconn.rollback()
            except Exception:
                pass
            if isinstance(exc, sqlite3.Error):
                raise
            raise VicidialError(f"writing VICIdial's DNC tables: {exc}") from None
        conn.execute("COMMIT")
        for b in sorted(unmapped):
            notes.append(f"brand {b} has no campaign in [vicidial] campaign_brands: its entries are not pushed")
        return result
    finally:
        db.conn.close()
