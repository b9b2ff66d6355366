"""The one INI configuration file.

Path: ``--config``, else ``$RPO_GUARD_CONFIG``, else
``/etc/rpo-guard/rpo-guard.conf``. A path given explicitly must exist; the
default path may be absent (built-in defaults apply). Every setting is
declared in :data:`SETTINGS` with its default and meaning; an unknown section
or key, or a bad value, is a :class:`ConfigError` naming file, section and key.

It reads best whole: :data:`SETTINGS` is the one table of every key (the docs'
table and the sample configuration are checked against it), and each value's
parser sits next to the keys that use it.
"""
from __future__ import annotations

import os
from collections import namedtuple

DEFAULT_PATH = "/etc/rpo-guard/rpo-guard.conf"
ENV_VAR = "RPO_GUARD_CONFIG"


class ConfigError(Exception):
    pass


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError("must be a positive whole number")
    return n


def _nonneg_int(v: str) -> int:
    n = int(v)
    if n < 0:
        raise ValueError("must be zero or more")
    return n


def _prefixes(v: str) -> tuple[str, ...]:
    out = tuple(p.strip() for p in v.split(",") if p.strip())
    for p in out:
        if not all(ch.isdigit() or ch in "*#+" for ch in p):
            raise ValueError(f"prefix {p!r} may hold only digits, * # +")
    return out


def _region(v: str) -> str:
    v = v.strip().upper()
    if len(v) != 2 or not v.isalpha():
        raise ValueError("must be a two-letter region code such as IT")
    return v


def _timezone(v: str) -> str:
    from zoneinfo import ZoneInfo
    ZoneInfo(v.strip())  # raises for an unknown zone
    return v.strip()


def _octal_mode(v: str) -> int:
    n = int(v, 8)
    if n & 0o002:
        raise ValueError("must not be world-writable")
    return n


def _listen(v: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [addr]:port); the host must be an IP address."""
    import ipaddress
    v = v.strip()
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:4573")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ipaddress.ip_address(host)  # raises: a name would be resolved at start-up, an address cannot lie
    n = int(port)
    if not 0 <= n <= 65535:
        raise ValueError("port must be between 0 and 65535")
    return host, n


def _networks(v: str) -> tuple:
    import ipaddress
    out = tuple(ipaddress.ip_network(p.strip(), strict=False) for p in v.split(",") if p.strip())
    if not out:
        raise ValueError("must name at least one address or network")
    return out


def _group(v: str) -> str:
    v = v.strip()
    if not v:
        return v
    import re
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?", v):
        raise ValueError("must be a group name (letters, digits, _ . -) or a numeric id")
    return v


def _str(v: str) -> str:
    return v.strip()


def _synchronous(v: str) -> str:
    v = v.strip().lower()
    if v not in ("normal", "full"):
        raise ValueError("must be normal or full")
    return v


def _event_loop(v: str) -> str:
    v = v.strip().lower()
    if v not in ("uvloop", "asyncio"):
        raise ValueError("must be uvloop or asyncio")
    return v


def _milliseconds(v: str) -> int:
    n = int(v)
    if not 1 <= n <= 60000:
        raise ValueError("must be between 1 and 60000 milliseconds")
    return n


def _switch(v: str) -> bool:
    w = v.strip().lower()
    if w in ("on", "yes", "true", "1"):
        return True
    if w in ("off", "no", "false", "0"):
        return False
    raise ValueError("must be on or off")


def _window(v: str):
    """``HH:MM-HH:MM`` -> (start, end) times; the end is excluded."""
    from datetime import time
    try:
        a, b = (part.strip() for part in v.split("-"))
        for part in (a, b):
            if not (len(part) == 5 and part[2] == ":" and (part[:2] + part[3:]).isascii()
                    and (part[:2] + part[3:]).isdigit()):
                raise ValueError
        start, end = time.fromisoformat(a), time.fromisoformat(b)
    except ValueError:
        raise ValueError("must be HH:MM-HH:MM") from None
    if not start < end:
        raise ValueError("the start must be before the end")
    return start, end


def _local_holidays(v: str) -> tuple[str, ...]:
    """Comma list of ``MM-DD`` (every year) or ``YYYY-MM-DD`` (that day only)."""
    from datetime import date
    out = []
    for item in (p.strip() for p in v.split(",")):
        if not item:
            continue
        try:
            date.fromisoformat(item if len(item) == 10 else f"2024-{item}")  # 2024: 02-29 exists
        except ValueError:
            raise ValueError(f"{item!r} is not MM-DD or YYYY-MM-DD") from None
        if len(item) not in (5, 10):
            raise ValueError(f"{item!r} is not MM-DD or YYYY-MM-DD")
        out.append(item)
    return tuple(out)


def _box_name(v: str) -> str:
    v = v.strip()
    if v and not (len(v) <= 64 and v.isascii() and v.replace("-", "a").replace("_", "a").replace(".", "a").isalnum()):
        raise ValueError("must be up to 64 letters, digits, '-', '_' or '.'")
    return v


def _observer(v: str) -> str:
    v = v.strip().lower()
    if v not in ("auto", "polling"):
        raise ValueError("must be auto or polling")
    return v


def _encoding(v: str) -> str:
    import codecs
    v = v.strip().lower()
    if v != "auto":
        codecs.lookup(v)  # LookupError for an unknown codec
    return v


def _delimiter(v: str) -> str:
    v = v.strip()
    named = {"auto": "auto", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    if v.lower() in named:
        return named[v.lower()]
    if len(v) != 1 or v.isalnum() or v in "\"'":
        raise ValueError("must be auto, tab, comma, semicolon, pipe or one punctuation character")
    return v


def _header(v: str) -> str:
    v = v.strip().lower()
    if v not in ("auto", "yes", "no"):
        raise ValueError("must be auto, yes or no")
    return v


def _words(v: str) -> tuple[str, ...]:
    out = tuple(" ".join(w.lower().split()) for w in v.split(",") if w.strip())
    if not out:
        raise ValueError("needs at least one word")
    return out


def _port(v: str) -> int:
    n = int(v.strip())
    if not 0 < n < 65536:
        raise ValueError("a TCP port 1-65535")
    return n


def _campaign_brands(v: str) -> tuple[tuple[str, str], ...]:
    """``CAMP1:Brand A, CAMP2:Brand B`` -> (("CAMP1", "Brand A"), ...): VICIdial campaign -> brand."""
    out: dict[str, str] = {}
    for item in (x.strip() for x in v.split(",")):
        if not item:
            continue
        campaign, sep, brand = (x.strip() for x in item.partition(":"))
        if not sep or not campaign or not brand:
            raise ValueError(f"{item!r} is not CAMPAIGN:brand")
        if len(campaign) > 8:
            raise ValueError(f"campaign {campaign!r}: VICIdial campaign ids are at most 8 characters")
        if campaign in out and out[campaign] != brand:
            raise ValueError(f"campaign {campaign!r} is given two brands")
        out[campaign] = brand
    return tuple(out.items())


# [source NAME] sections: how one sender's files are read (rpo_guard.register.sources.Source); NAME "default"
# changes the defaults of every file. key -> (parser, default text, meaning)
SOURCE_SETTINGS: dict[str, tuple] = {
    "encoding": (_encoding, "auto", "auto (UTF-8, with or without BOM, else Latin-1), or a codec: utf-8, utf-8-sig, latin-1, cp1252"),
    "delimiter": (_delimiter, "auto", "auto (the most frequent of , ; tab | in the first line), or tab, comma, semicolon, pipe, a character"),
    "header": (_header, "auto", "auto (a first row whose number cell is not a number is a header), yes, no"),
    "number_column": (_words, "number,numero,telefono,phone,msisdn,utenza,numero_telefono,cli",
                      "header names of the number column (first match), or its 1-based position"),
    "status_column": (_words, "status,stato,esito,result,iscritto", "header names of the status column, or its 1-based position"),
    "registration_date_column": (_words, "registration_date,data_iscrizione", "optional column kept when present"),
    "registered_words": (_words, "registered,iscritto,iscritta,opposto,opposizione,bloccato,blocked,optout,1,si,sì,yes,y,s,true",
                         "status words meaning the number is on the register"),
    "not_registered_words": (_words, "not_registered,not registered,non iscritto,non_iscritto,non iscritta,libero,cleared,callable,"
                             "contattabile,0,no,n,false",
                             "status words meaning the number is not on the register"),
}


def _purpose(v: str) -> str:
    v = v.strip().lower()
    if v not in ("commercial", "statistical", "other"):
        raise ValueError("must be commercial (0844 range), statistical (0843 range) or other")
    return v


def _scope(v: str) -> str:
    v = v.strip().lower()
    if v not in ("number", "brand"):
        raise ValueError("must be number (every brand's attempts count) or brand (only the call's brand's)")
    return v


# [brand NAME] sections: the policy of one brand (the AGI's BRAND argument, exactly). Every key is
# optional; a brand without a section, or a key left out, keeps the global behaviour.
# key -> (parser, default text, meaning)
BRAND_SETTINGS: dict[str, tuple] = {
    "require_consent": (_switch, "off", "only a consent, a contract (or one ended within contract_grace_days) or "
                                        "a callback request allows the brand's calls: reason consent_required "
                                        "(energy sellers, 2026 DL Bollette conversion law)"),
    "require_declared_caller_id": (_switch, "off", "the caller ID must be declared for the brand (rpo-guard "
                                                   "caller-id add); the generic fallback does not apply"),
    "purpose": (_purpose, "", "commercial, statistical or other: a 0843 (statistics) or 0844 (market research, "
                              "advertising, sales) caller ID of another purpose is refused (AGCOM 156/18/CIR); "
                              "empty = not checked"),
    "max_attempts": (_positive_int, "", "at most this many allowed attempts to one number in attempt_window_days "
                                        "(reason attempt_cap); empty = no cap of the brand's own"),
    "attempt_window_days": (_positive_int, "30", "days of the brand's cap: the call's day and the days before it"),
    "attempt_scope": (_scope, "brand", "whose attempts the brand's cap counts: brand (its own) or number (every brand's)"),
}


# section -> key -> (parser, default text, meaning)
SETTINGS: dict[str, dict[str, tuple]] = {
    "paths": {
        "data_dir": (_str, "/var/lib/rpo-guard", "folder holding rpo.db (register, consents, DNC) and audit.db"),
        "log_file": (_str, "", "file for failures; empty = syslog (when there is one), /var/log/rpo-guard/failures.log and stderr"),
    },
    "numbers": {
        "default_region": (_region, "IT", "region for numbers dialed in national form"),
        "strip_prefixes": (_prefixes, "", "comma list of outside-line or tech prefixes removed once, first match wins"),
    },
    "rules": {
        "validity_days": (_positive_int, "15", "days a consultation stays valid, its own day included (DPR 26/2022 art. 8(2))"),
        "contract_grace_days": (_nonneg_int, "30", "days a contract still allows calls after it ended"),
        "timezone": (_timezone, "Europe/Rome", "zone whose calendar dates the rules use"),
    },
    "conduct": {
        "calling_hours": (_switch, "on", "refuse calls outside the Code of conduct's calling hours (Europe/Rome)"),
        "weekday_hours": (_window, "09:00-20:00", "calling window Monday to Friday, end excluded"),
        "reduced_hours": (_window, "10:00-19:00", "calling window on Saturdays and on days before a holiday, end excluded"),
        "local_holidays": (_local_holidays, "", "extra holidays (patron saints), comma list of MM-DD or YYYY-MM-DD: "
                                                  "no calls that day, reduced hours the day before"),
        "caller_id_check": (_switch, "on", "refuse calls whose caller ID is hidden, undeclared for the brand, "
                                            "or not an Italian geographic, mobile, 0843 or 0844 number"),
        "silent_call_days": (_positive_int, "7", "after a silent call on day D the number is refused up to D + this "
                                                  "many days (Garante, 20 Feb 2014: at least 7)"),
        "callback_days": (_positive_int, "7", "a callback_request allows calls from its brand this many days, "
                                               "its own day included"),
    },
    "sync": {
        "inbox": (_str, "", "folder `rpo-guard watch` imports from (done/ and quarantine/ inside it); empty = <data_dir>/inbox"),
        "rescan_seconds": (_positive_int, "60", "period of the watcher's full rescan of the inbox (catches missed events)"),
        "manifest_wait_seconds": (_positive_int, "600", "how long the watcher waits for a file's manifest before quarantining it"),
        "observer": (_observer, "auto", "watcher backend: auto (inotify where available), polling (NFS/CIFS)"),
    },
    "store": {
        "busy_timeout_ms": (_milliseconds, "1000", "how long a lookup waits for a lock before failing closed (BLOCK/error)"),
        "audit_busy_timeout_ms": (_milliseconds, "2000", "how long an audit write waits for other writers before failing closed"),
        "file_mode": (_octal_mode, "0640", "permissions of databases the tool creates (with `group`: plus group read and write)"),
        "group": (_group, "", "group given (chown) to the data folder and the databases the tool creates, e.g. asterisk; "
                              "the folder becomes 2770 (setgid) instead of 0750; empty = leave the creator's group"),
    },
    "fastagi": {
        "listen": (_listen, "127.0.0.1:4573", "address:port `rpo-guard serve` binds (IPv6 as [addr]:port)"),
        "allowed_peers": (_networks, "127.0.0.1, ::1", "comma list of addresses or networks (CIDR) allowed to connect; others are closed at once"),
        "deadline_ms": (_milliseconds, "500", "a lookup not done this soon answers BLOCK/error (and is recorded)"),
        "read_timeout_ms": (_milliseconds, "2000", "how long the server waits for the environment block or a response line"),
        "max_request_bytes": (_positive_int, "16384", "longest environment block or response line accepted"),
        "max_connections": (_positive_int, "1024", "sessions served at once; more are closed at once"),
        "lookup_threads": (_nonneg_int, "0", "0 = lookups in the event loop (fastest; bounded by SQLite's progress handler and busy timeout); N = in N threads (for storage that can stall)"),
        "drain_timeout_ms": (_milliseconds, "10000", "on SIGTERM, how long in-flight sessions may take to finish"),
        "event_loop": (_event_loop, "uvloop", "uvloop (libuv, about half the CPU per call) or asyncio (the standard library's loop)"),
    },
    "attempts": {
        "max_attempts": (_nonneg_int, "0", "at most this many allowed attempts to one number in window_days, "
                                           "for every call (reason attempt_cap); 0 = no cap"),
        "window_days": (_positive_int, "30", "days of the cap: the call's day and the days before it"),
        "scope": (_scope, "number", "whose attempts count: number (every brand's) or brand (the call's brand's)"),
    },
    "audit": {
        "retention_days": (_nonneg_int, "0", "`audit prune` without --before removes attempts older than this many days; 0 = keep everything"),
        "synchronous": (_synchronous, "normal", "audit.db durability: normal = a commit survives any crash of the process, the newest ones may be lost on a power cut; full = fsync on every commit, no record lost even then (a call waits longer for the write lock under load)"),
        "digest_key_file": (_str, "", "file holding the HMAC-SHA256 key that signs `audit digest`; empty = unsigned digest, to anchor outside the machine"),
    },
    # Fleet mode (docs/fleet.md): many boxes, one central PostgreSQL. Off while `central` is empty.
    "fleet": {
        "central": (_str, "", "the central PostgreSQL: a postgresql:// URI or a libpq conninfo (host=/run/postgresql "
                              "dbname=rpo); empty = single-box mode (rpo.db is written on this box)"),
        "box": (_box_name, "", "this box's name in the fleet (letters, digits, - _ .); empty = the host name"),
        "max_staleness_seconds": (_positive_int, "60", "a call is refused (replica_stale) when the replica has not "
                                                       "been confirmed current for longer than this; smaller: an "
                                                       "opt-out missed for less time, but a shorter centre outage "
                                                       "stops every call"),
        "heartbeat_seconds": (_positive_int, "5", "how often the fleet agent confirms the replica with the centre "
                                                  "when nothing changes (keep it well under max_staleness_seconds)"),
    },
    # `rpo-guard vicidial sync` (docs/integrations/vicidial.md); attributes are vicidial_<key>
    "vicidial": {
        "socket": (_str, "", "unix socket of VICIdial's MariaDB/MySQL server (wins over host)"),
        "host": (_str, "localhost", "VICIdial's database host, when no socket is given"),
        "port": (_port, "3306", "VICIdial's database port, with host"),
        "user": (_str, "cron", "database user (VICIdial's default is cron)"),
        "password_file": (_str, "", "file whose first line is the user's password; empty = no password"),
        "database": (_str, "asterisk", "VICIdial's database"),
        "campaign_brands": (_campaign_brands, "", "comma list of CAMPAIGN:brand: a campaign's DNC list is that "
                                                    "brand's; unmapped campaigns' entries are imported for every brand"),
    },
}

# Sections whose keys are attributes named <section>_<key> (their keys are common words).
PREFIXED_SECTIONS = frozenset({"vicidial"})

# Keys whose attribute on Config has another name (a clearer one out of their section).
_ATTRIBUTES = {("sync", "inbox"): "inbox_dir", ("attempts", "max_attempts"): "attempt_max",
               ("attempts", "window_days"): "attempt_window_days", ("attempts", "scope"): "attempt_scope"}


def _attribute(section: str, key: str) -> str:
    named = _ATTRIBUTES.get((section, key))
    if named:
        return named
    return f"{section}_{key}" if section in PREFIXED_SECTIONS else key


class Config(namedtuple("Config", ["path"] + [_attribute(section, k) for section, keys in SETTINGS.items()
                                            for k in keys] + ["sources", "brands"])):
    """The loaded settings, one attribute per key of SETTINGS (``[sync] inbox``
    is ``inbox_dir``; ``[attempts] max_attempts``, ``window_days`` and ``scope``
    are ``attempt_max``, ``attempt_window_days`` and ``attempt_scope``; ``[vicidial] user``
    is ``vicidial_user``), plus
    ``path`` (None when the built-in defaults apply), ``sources`` (name ->
    {key: parsed value}, from ``[source NAME]``) and ``brands`` (the same, from
    ``[brand NAME]``).
    Paths are plain strings: pathlib costs milliseconds to import on the
    per-call path."""
    __slots__ = ()

    @property
    def inbox(self):
        """The watched inbox folder (a Path; not used on the per-call path)."""
        from pathlib import Path
        return Path(self.inbox_dir) if self.inbox_dir else Path(self.data_dir) / "inbox"

    @property
    def register_db(self) -> str:
        return os.path.join(self.data_dir, "rpo.db")

    @property
    def audit_db(self) -> str:
        return os.path.join(self.data_dir, "audit.db")

    @property
    def fleet(self) -> bool:
        """Fleet mode: writes go to the central PostgreSQL, rpo.db is its replica."""
        return bool(self.central)

    @property
    def box_name(self) -> str:
        if self.box:
            return self.box
        import socket
        return socket.gethostname()

    @property
    def policy(self):
        from rpo_guard.rules.decision import Policy
        return Policy(validity_days=self.validity_days, contract_grace_days=self.contract_grace_days,
                      calling_hours=self.calling_hours, weekday_window=self.weekday_hours,
                      reduced_window=self.reduced_hours, caller_id_check=self.caller_id_check,
                      silent_call_days=self.silent_call_days, callback_days=self.callback_days,
                      attempt_caps=self._global_caps(),
                      max_staleness_seconds=self.max_staleness_seconds if self.central else None)

    def _global_caps(self) -> tuple:
        if not self.attempt_max:
            return ()
        from rpo_guard.rules.decision import AttemptCap
        return (AttemptCap(self.attempt_max, self.attempt_window_days, self.attempt_scope == "brand"),)

    def policy_for(self, brand: str):
        """The policy of a call for ``brand``: the global one, with the brand's
        ``[brand NAME]`` settings when it has a section. A brand that sets a
        caller-ID setting gets the caller-ID rule even with ``[conduct]
        caller_id_check = off`` (its settings are stricter, never looser)."""
        policy = self.policy
        own = self.brands.get((brand or "").strip()) if self.brands else None
        if not own:
            return policy
        caps = policy.attempt_caps
        if own.get("max_attempts"):
            from rpo_guard.rules.decision import AttemptCap
            caps = caps + (AttemptCap(own["max_attempts"], own.get("attempt_window_days", 30),
                                      own.get("attempt_scope", "brand") == "brand"),)
        declared = own.get("require_declared_caller_id", False)
        purpose = own.get("purpose", "")
        return policy._replace(require_consent=own.get("require_consent", False),
                               require_declared_caller_id=declared, purpose=purpose, attempt_caps=caps,
                               caller_id_check=policy.caller_id_check or declared or bool(purpose))


def resolve_path(explicit: str | None) -> tuple[str, bool]:
    """(path, required): explicit paths and $RPO_GUARD_CONFIG must exist."""
    if explicit:
        return explicit, True
    env = os.environ.get(ENV_VAR)
    if env:
        return env, True
    return DEFAULT_PATH, False


def load(explicit: str | None = None, skip: tuple[str, ...] = ()) -> Config:
    """Load and check the configuration.

    ``skip`` names sections whose values the caller does not use (the process
    AGI skips [fastagi] and [sync]: checking addresses costs it an import on
    every call); their fields are None. Unknown sections and keys are still
    refused everywhere; `rpo-guard serve`, `watch` and `status` check the rest.
    """
    import configparser

    path, required = resolve_path(explicit)
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"),
                                       default_section="__no_default_section__")
    parser.optionxform = str
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh, source=path)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: configuration file not found") from None
        path = None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {exc}".replace("\n", " ")) from None

    values = {}
    sources: dict[str, dict] = {}
    brands: dict[str, dict] = {}
    for section in parser.sections():
        if section.startswith("brand "):
            name = section[len("brand "):].strip()
            if not name:
                raise ConfigError(f"{path}: [{section}] needs a name, e.g. [brand Energia Uno]")
            parsed = brands.setdefault(name, {})
            for key in parser[section]:
                if key not in BRAND_SETTINGS:
                    raise ConfigError(f"{path}: [{section}] unknown key {key!r} (known: {', '.join(BRAND_SETTINGS)})")
                text = parser[section][key]
                try:
                    parsed[key] = BRAND_SETTINGS[key][0](text)
                except ValueError as exc:
                    raise ConfigError(f"{path}: [{section}] {key} = {text!r}: {exc}") from None
            if ("attempt_window_days" in parsed or "attempt_scope" in parsed) and "max_attempts" not in parsed:
                raise ConfigError(f"{path}: [{section}] attempt_window_days and attempt_scope need max_attempts")
            continue
        if section.startswith("source "):
            name = section[len("source "):].strip()
            if not name:
                raise ConfigError(f"{path}: [{section}] needs a name, e.g. [source fub]")
            parsed = sources.setdefault(name, {})
            for key in parser[section]:
                if key not in SOURCE_SETTINGS:
                    raise ConfigError(f"{path}: [{section}] unknown key {key!r} (known: {', '.join(SOURCE_SETTINGS)})")
                text = parser[section][key]
                try:
                    parsed[key] = SOURCE_SETTINGS[key][0](text)
                except (ValueError, LookupError) as exc:
                    raise ConfigError(f"{path}: [{section}] {key} = {text!r}: {exc}") from None
            continue
        if section not in SETTINGS:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(SETTINGS)})")
        for key in parser[section]:
            if key not in SETTINGS[section]:
                raise ConfigError(f"{path}: [{section}] unknown key {key!r} "
                                  f"(known: {', '.join(SETTINGS[section])})")
    for section, keys in SETTINGS.items():
        for key, (parse, default, _doc) in keys.items():
            if section in skip:
                values[_attribute(section, key)] = None
                continue
            text = parser.get(section, key, fallback=default) if parser.has_section(section) else default
            try:
                values[_attribute(section, key)] = parse(text)
            except (ValueError, LookupError) as exc:
                where = f"{path}: [{section}] {key}" if path else f"[{section}] {key}"
                raise ConfigError(f"{where} = {text!r}: {exc}") from None
    windows = [b.get("attempt_window_days", 30) for b in brands.values() if b.get("max_attempts")]
    if values.get("attempt_max"):
        windows.append(values["attempt_window_days"])
    if windows and values.get("retention_days") and values["retention_days"] < max(windows):
        raise ConfigError(f"{path}: [audit] retention_days = {values['retention_days']} is shorter than an attempt "
                          f"cap's window ({max(windows)} days): pruned attempts would not be counted")
    cfg = Config(path=path, sources=sources, brands=brands, **values)
    from rpo_guard.failure_log import use_timezone
    use_timezone(cfg.timezone)  # failure lines are stamped as the audit log's rows
    return cfg


def settings_table() -> str:
    """The settings as a Markdown table (README)."""
    rows = ["| section | key | default | meaning |", "|---|---|---|---|"]
    for section, keys in SETTINGS.items():
        for key, (_p, default, doc) in keys.items():
            rows.append(f"| `[{section}]` | `{key}` | `{default}` | {doc} |")
    for key, (_p, default, doc) in SOURCE_SETTINGS.items():
        rows.append(f"| `[source NAME]` | `{key}` | `{default}` | {doc} |")
    for key, (_p, default, doc) in BRAND_SETTINGS.items():
        rows.append(f"| `[brand NAME]` | `{key}` | `{default}` | {doc} |")
    return "\n".join(rows)
