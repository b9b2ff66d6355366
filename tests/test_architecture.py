"""The house rules of the package layout, checked on the source (ARCHITECTURE.md).

An AST walk over rpo_guard/ collects every import of the package's own
modules, at module level and inside functions alike (a lazy import is still a
dependency), leaving out those under ``if TYPE_CHECKING:``. Then:

* no import circle between modules;
* the pure rules (rpo_guard/rules/) import nothing else of the package;
* nothing outside rpo_guard/cli/ imports the command line, and no subcommand
  module imports the main group;
* the per-call path (process AGI, FastAGI server) loads no heavy library;
* a module over 500 lines says in its opening comment why it reads best whole.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rpo_guard"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (a package import names its __init__)."""
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target and target not in known:  # `from pkg import name`: name may be an attribute
            target = target.rpartition(".")[0]
        return target or None

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "rpo_guard":
                        found.add(resolve(alias.name))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = here.split(".")
                    base = base[:len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                if mod.split(".")[0] != "rpo_guard":
                    continue
                for alias in child.names:
                    found.add(resolve(f"{mod}.{alias.name}"))
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(None)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    return out


def _is_under(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def test_the_walk_sees_lazy_and_relative_imports():
    g = graph()
    assert "rpo_guard.rules.decision" in g["rpo_guard.guard"]          # module level
    assert "rpo_guard.register.store" in g["rpo_guard.agi"]            # inside a function
    assert "rpo_guard.fastagi.session" in g["rpo_guard.fastagi.server"]  # relative
    assert "rpo_guard.fastagi.server" not in g["rpo_guard.fastagi.session"]  # TYPE_CHECKING only


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert cycles(graph()) == []


def test_the_pure_rules_import_nothing_else_of_the_package():
    bad = {name: sorted(d for d in deps if not _is_under(d, "rpo_guard.rules"))
           for name, deps in graph().items() if _is_under(name, "rpo_guard.rules")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_nothing_imports_the_command_line():
    g = graph()
    outside = {name: sorted(d for d in deps if _is_under(d, "rpo_guard.cli"))
               for name, deps in g.items() if not _is_under(name, "rpo_guard.cli")}
    assert {k: v for k, v in outside.items() if v} == {}
    into_main = sorted(name for name, deps in g.items() if "rpo_guard.cli.main" in deps)
    assert into_main == []


def test_the_call_path_loads_no_heavy_library():
    heavy = {"click", "sqlite_utils", "holidays", "watchdog", "psycopg", "pymysql", "MySQLdb"}
    code = ("import sys, rpo_guard.agi, rpo_guard.guard, rpo_guard.register.store, rpo_guard.fastagi.server;"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(heavy)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name, path", sorted(modules().items()))
def test_a_long_module_says_why_it_reads_best_whole(name, path):
    lines = path.read_text().count("\n")
    if lines <= 500:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "reads best whole" in doc, f"{name} has {lines} lines: split it, or say why it reads best whole"
