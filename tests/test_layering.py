"""Imports run one way: cli -> flows -> tasks -> musicinterp. The library never imports Prefect.

The folders cli/, flows/ and tasks/ install as ``musicinterp_cli``, ``musicinterp_flows`` and
``musicinterp_tasks`` (pyproject's package-dir): generic top-level names would collide in site-packages."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import musicinterp

ROOT = Path(__file__).resolve().parents[1]


def test_musicinterp__never_imports_prefect_flows_or_cli():
    modules = [m.name for m in pkgutil.walk_packages(musicinterp.__path__, "musicinterp.")]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + (
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'prefect', 'musicinterp_flows', 'musicinterp_tasks', 'musicinterp_cli'})\n"
            "print(bad); sys.exit(1 if bad else 0)\n"
        )
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_tasks__do_not_import_flows():
    for path in (ROOT / "tasks").glob("*.py"):
        assert "musicinterp_flows" not in _imports(path), path
    for path in (ROOT / "musicinterp").rglob("*.py"):
        assert not _imports(path) & {"prefect", "musicinterp_flows", "musicinterp_tasks", "musicinterp_cli"}, path


def test_cli__is_imported_by_nothing_but_the_entry_point_and_tests():
    for package in ("musicinterp", "tasks", "flows"):
        for path in (ROOT / package).rglob("*.py"):
            assert "musicinterp_cli" not in _imports(path), path


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _musicinterp_imports(path: Path, modules: set[str], module_level_only: bool) -> set[str]:
    """The musicinterp modules that ``path`` imports (``from pkg import sub`` counts as ``pkg.sub`` only),
    at module level and, unless ``module_level_only``, inside functions; never ``if TYPE_CHECKING``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.If) and _is_type_checking(child):
                for n in child.orelse:
                    visit(n)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                # ``from pkg import sub`` imports the submodule; ``from pkg import name`` runs pkg
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def _import_graph(module_level_only: bool) -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in (ROOT / "musicinterp").rglob("*.py")}
    return {m: _musicinterp_imports(p, set(paths), module_level_only) for m, p in paths.items()}


def test_annotate__production_does_not_import_the_evaluation():
    # ground truth (annotate.truth) is production; scoring and the validation harness are evaluation, used
    # only by the harness itself and the command line
    evaluation = {"musicinterp.annotate.scoring", "musicinterp.annotate.validation"}
    graph = _import_graph(module_level_only=False)
    assert evaluation <= set(graph), sorted(evaluation - set(graph))
    bad = {
        m: sorted(deps & evaluation)
        for m, deps in graph.items()
        if deps & evaluation and m != "musicinterp.annotate.validation"
    }
    assert not bad, bad


def test_musicinterp__has_no_import_cycles():
    # function-level imports count too: a deferred import back into a module's importer is still a circle
    graph = _import_graph(module_level_only=False)
    cycles, state, stack = [], {}, []  # state: 1 on the stack, 2 done

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*stack[stack.index(d) :], d]))
            elif d not in state:
                dfs(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    assert not cycles, "\n".join(cycles)


def test_packaging__every_package_folder_installs_and_none_under_a_generic_name():
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"musicinterp_cli": "cli", "musicinterp_flows": "flows", "musicinterp_tasks": "tasks"}
    assert setuptools["package-dir"] == folders
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "musicinterp").rglob("__init__.py")
    } | set(folders)
    assert set(setuptools["packages"]) == on_disk
    import musicinterp_flows  # the installed name resolves to the layout's folder

    assert Path(musicinterp_flows.__file__).resolve().parent == ROOT / "flows"
