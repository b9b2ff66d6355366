"""The documentation covers what the code offers, and its links lead somewhere.

* Every command of the `rpo-guard` click tree is named in docs/ as ``rpo-guard <command>``,
  and each of its options appears in a section (a heading's span) of docs/ that names it.
* Every configuration key of rpo_guard.config is in docs/ as ``[section]`` and ``key`` on one
  line, and in the sample configuration deploy/rpo-guard.conf.sample under its section with
  its default.
* Relative links in README.md and docs/ point at files that exist, and ``#anchors`` at
  headings that exist.
* The README stays a front page, and its quick-start commands are ones ./dev knows.
"""
from __future__ import annotations

import configparser
import importlib
import re
from pathlib import Path

import click
import pytest

from rpo_guard import config as config_mod

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
SAMPLE = ROOT / "deploy" / "rpo-guard.conf.sample"


def _cli() -> click.Group:
    for module, name in (("rpo_guard.cli.main", "cli"), ("rpo_guard.cli", "cli")):
        try:
            group = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(group, click.Group):
            return group
    raise AssertionError("the rpo-guard click group was not found")


def _commands(group: click.Group, path=()):
    for name, cmd in sorted(group.commands.items()):
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


def _sections() -> list[str]:
    """Every heading's span of every page (a span runs to the next heading of any level)."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        parts = re.split(r"(?m)^(?=#{1,6} )", text)
        out.extend(parts)
    return out


SECTIONS = _sections()
ALL_DOCS = "\n".join(SECTIONS)
COMMANDS = list(_commands(_cli()))


def test_pages_exist():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {"sysadmin.md", "dialplan.md", "auditor.md", "benchmarks.md"} <= names
    assert any(n.startswith("design/") for n in names)
    assert len(COMMANDS) > 20  # the walk found the tree


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_command_and_its_options_are_documented(path, cmd):
    words = " ".join(path)
    named = re.compile(r"rpo-guard (?:\[?--config[= ]PATH\]? )?" + re.escape(words) + r"(?![\w-])")
    where = [s for s in SECTIONS if named.search(s)]
    assert where, f"`rpo-guard {words}` is not mentioned in docs/"
    missing = []
    for param in cmd.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        longs = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
        if not any(re.search(re.escape(o) + r"(?![\w-])", s) for s in where for o in longs):
            missing.append("/".join(longs))
    assert not missing, (f"options of `rpo-guard {words}` not in a docs/ section that names the command: "
                         f"{', '.join(missing)}")


def test_root_options_are_documented():
    for param in _cli().params:
        if isinstance(param, click.Option):
            assert any(o in ALL_DOCS for o in param.opts if o.startswith("--")), param.opts


CONFIG_KEYS = [(s, k) for s, keys in config_mod.SETTINGS.items() for k in keys] + \
              [("source NAME", k) for k in config_mod.SOURCE_SETTINGS] + \
              [("brand NAME", k) for k in config_mod.BRAND_SETTINGS]


@pytest.mark.parametrize("section,key", CONFIG_KEYS, ids=lambda v: v)
def test_config_key_is_documented(section, key):
    line = re.compile(r"\[" + re.escape(section) + r"\].*(?<![\w-])" + re.escape(key) + r"(?![\w-])")
    assert any(line.search(ln) for ln in ALL_DOCS.splitlines()), \
        f"[{section}] {key} is not documented in docs/ (a line naming both)"


def _sample_keys() -> dict[str, dict[str, str]]:
    """section -> key -> value, reading commented-out `# key = value` lines too."""
    out: dict[str, dict[str, str]] = {}
    section = None
    for raw in SAMPLE.read_text(encoding="utf-8").splitlines():
        ln = raw.lstrip("#").strip() if re.match(r"#\s*\[", raw) or re.match(r"#\s*[a-z_]+ =", raw) else raw.strip()
        m = re.fullmatch(r"\[([^\]]+)\]", ln)
        if m:
            section = ("source NAME" if m.group(1).startswith("source ")
                       else "brand NAME" if m.group(1).startswith("brand ") else m.group(1))
            continue
        m = re.fullmatch(r"([a-z_]+) =\s*(.*)", ln)
        if m and section:
            out.setdefault(section, {})[m.group(1)] = m.group(2)
    return out


def test_sample_configuration_explains_every_key_with_its_default():
    sample = _sample_keys()
    set_here = {"data_dir", "log_file", "group"}  # filled in by deploy/install.sh
    for section, key in CONFIG_KEYS:
        assert key in sample.get(section, {}), f"[{section}] {key} missing from {SAMPLE.name}"
        per_name = config_mod.BRAND_SETTINGS if section == "brand NAME" else config_mod.SOURCE_SETTINGS
        default = (config_mod.SETTINGS[section] if section in config_mod.SETTINGS else per_name)[key][1]
        if key not in set_here:
            assert sample[section][key] == default, f"[{section}] {key}: sample says {sample[section][key]!r}, default {default!r}"


def test_sample_configuration_loads(tmp_path):
    """The sample as shipped is a valid configuration (with an existing group)."""
    import grp
    import os
    text = SAMPLE.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^group = .*$", f"group = {grp.getgrgid(os.getgid()).gr_name}", text)
    conf = tmp_path / "rpo-guard.conf"
    conf.write_text(text, encoding="utf-8")
    cfg = config_mod.load(str(conf))
    assert cfg.data_dir == "/var/lib/rpo-guard" and cfg.log_file == "/var/log/rpo-guard/failures.log"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    assert set(parser.sections()) == set(config_mod.SETTINGS)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*]", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for ln in page.read_text(encoding="utf-8").splitlines():
        if ln.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        m = re.match(r"#{1,6} (.*)", ln)
        if m:
            a = _anchor(m.group(1))
            n = seen.get(a, 0)
            seen[a] = n + 1
            out.add(a if n == 0 else f"{a}-{n}")
    return out


LINKED = [ROOT / "README.md", ROOT / "SECURITY.md", *PAGES]


@pytest.mark.parametrize("page", LINKED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(page):
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not bad, "\n".join(bad)


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 300
    for page in ("docs/sysadmin.md", "docs/dialplan.md", "docs/auditor.md"):
        assert f"]({page})" in readme, f"README does not link {page}"
    dev = (ROOT / "dev").read_text()
    for sub in re.findall(r"(?m)^\./dev (\w+)", readme):
        assert re.search(rf"(?m)^\s*{sub}\)", dev), f"README's `./dev {sub}` is not a ./dev command"
    assert "./dev demo" in readme and "./dev test" in readme


@pytest.mark.parametrize("page", LINKED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_files_named_exist(page):
    """A source, test, deploy or unit file a page names (`rpo_guard/...py`, `tests/...py`,
    `deploy/...`, `systemd/...`, `dialplan/...`, `bench/...py`) exists: moves show up here."""
    text = page.read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w/.-])((?:rpo_guard|tests|bench)/[\w/.-]+\.py"
                           r"|(?:deploy|systemd|dialplan)/[\w.-]+)", text))
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"{page.name} names files that do not exist: {', '.join(missing)}"
