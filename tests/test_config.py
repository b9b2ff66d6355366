"""The INI configuration: defaults, precedence, clear errors."""
import pytest

from rpo_guard import config as config_mod
from rpo_guard.config import ConfigError, load


def write(tmp_path, text, name="c.conf"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_when_the_default_path_is_absent(monkeypatch):
    monkeypatch.delenv(config_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", "/nonexistent/rpo-guard.conf")
    cfg = load()
    assert cfg.path is None
    assert (cfg.validity_days, cfg.contract_grace_days, cfg.timezone) == (15, 30, "Europe/Rome")
    assert str(cfg.data_dir) == "/var/lib/rpo-guard"


def test_explicit_path_beats_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(config_mod.ENV_VAR, write(tmp_path, "[rules]\nvalidity_days = 10\n", "env.conf"))
    assert load().validity_days == 10
    assert load(write(tmp_path, "[rules]\nvalidity_days = 12\n")).validity_days == 12


def test_missing_explicit_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv(config_mod.ENV_VAR, raising=False)
    with pytest.raises(ConfigError, match="not found"):
        load(str(tmp_path / "nope.conf"))


@pytest.mark.parametrize("text, words", [
    ("[rules]\nvalidity_dayz = 3\n", ["unknown key", "validity_dayz"]),
    ("[rulez]\n", ["unknown section", "rulez"]),
    ("[rules]\nvalidity_days = soon\n", ["[rules] validity_days", "soon"]),
    ("[rules]\nvalidity_days = 0\n", ["positive"]),
    ("[rules]\ntimezone = Mars/Olympus\n", ["timezone"]),
    ("[numbers]\nstrip_prefixes = 9, x1\n", ["strip_prefixes", "x1"]),
    ("[store]\nfile_mode = 0666\n", ["world-writable"]),
    ("no section header\n", ["c.conf"]),
])
def test_bad_values_name_file_section_and_key(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load(path)
    for w in words:
        assert w in str(exc.value)


def test_every_setting_is_documented_in_the_sysadmin_guide():
    from pathlib import Path
    guide = (Path(__file__).resolve().parents[1] / "docs" / "sysadmin.md").read_text()
    for row in config_mod.settings_table().splitlines():
        assert row in guide, f"docs/sysadmin.md's configuration table lacks or differs from: {row}"
