"""The one INI configuration file.

Path: ``--config``, else ``$RPO_GUARD_CONFIG``, else
``/etc/rpo-guard/rpo-guard.conf``. A path given explicitly must exist; the
default path may be absent (built-in defaults apply). Every setting is
declared in :data:`SETTINGS` with its default and meaning; an unknown section
or key, or a bad value, is a :class:`ConfigError` naming file, section and key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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


def _str(v: str) -> str:
    return v.strip()


def _synchronous(v: str) -> str:
    v = v.strip().lower()
    if v not in ("normal", "full"):
        raise ValueError("must be normal or full")
    return v


def _milliseconds(v: str) -> int:
    n = int(v)
    if not 1 <= n <= 60000:
        raise ValueError("must be between 1 and 60000 milliseconds")
    return n


# section -> key -> (parser, default text, meaning)
SETTINGS: dict[str, dict[str, tuple]] = {
    "paths": {
        "data_dir": (_str, "/var/lib/rpo-guard", "folder holding rpo.db (register, consents, DNC) and audit.db"),
        "log_file": (_str, "", "file for failures; empty = syslog (stderr is lost under Asterisk)"),
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
    "store": {
        "busy_timeout_ms": (_milliseconds, "200", "how long a lookup or audit write waits for a lock before failing closed"),
        "file_mode": (_octal_mode, "0640", "permissions of databases the tool creates"),
    },
    "audit": {
        "retention_days": (_nonneg_int, "0", "`audit prune` without --before removes attempts older than this many days; 0 = keep everything"),
        "synchronous": (_synchronous, "normal", "audit.db durability: normal = a commit survives a crash of the process, the newest ones may be lost on a power cut; full = fsync on every commit (slower under load: a call waits longer for the write lock)"),
        "digest_key_file": (_str, "", "file holding the HMAC-SHA256 key that signs `audit digest`; empty = unsigned digest, to anchor outside the machine"),
    },
}


@dataclass(frozen=True)
class Config:
    path: str | None
    data_dir: Path
    log_file: str
    default_region: str
    strip_prefixes: tuple[str, ...]
    validity_days: int
    contract_grace_days: int
    timezone: str
    busy_timeout_ms: int
    file_mode: int
    retention_days: int = 0
    digest_key_file: str = ""
    synchronous: str = "normal"

    @property
    def register_db(self) -> Path:
        return self.data_dir / "rpo.db"

    @property
    def audit_db(self) -> Path:
        return self.data_dir / "audit.db"

    @property
    def policy(self):
        from .decision import Policy
        return Policy(validity_days=self.validity_days, contract_grace_days=self.contract_grace_days)


def resolve_path(explicit: str | None) -> tuple[str, bool]:
    """(path, required): explicit paths and $RPO_GUARD_CONFIG must exist."""
    if explicit:
        return explicit, True
    env = os.environ.get(ENV_VAR)
    if env:
        return env, True
    return DEFAULT_PATH, False


def load(explicit: str | None = None) -> Config:
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
    for section in parser.sections():
        if section not in SETTINGS:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(SETTINGS)})")
        for key in parser[section]:
            if key not in SETTINGS[section]:
                raise ConfigError(f"{path}: [{section}] unknown key {key!r} "
                                  f"(known: {', '.join(SETTINGS[section])})")
    for section, keys in SETTINGS.items():
        for key, (parse, default, _doc) in keys.items():
            text = parser.get(section, key, fallback=default) if parser.has_section(section) else default
            try:
                values[key] = parse(text)
            except (ValueError, LookupError) as exc:
                where = f"{path}: [{section}] {key}" if path else f"[{section}] {key}"
                raise ConfigError(f"{where} = {text!r}: {exc}") from None
    values["data_dir"] = Path(values["data_dir"])
    return Config(path=path, **values)


def settings_table() -> str:
    """The settings as a Markdown table (README)."""
    rows = ["| section | key | default | meaning |", "|---|---|---|---|"]
    for section, keys in SETTINGS.items():
        for key, (_p, default, doc) in keys.items():
            rows.append(f"| `[{section}]` | `{key}` | `{default}` | {doc} |")
    return "\n".join(rows)
