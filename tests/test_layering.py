"""Imports run one way: flows -> tasks -> musicinterp. The library never imports Prefect."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import musicinterp

ROOT = Path(__file__).resolve().parents[1]


def test_musicinterp__never_imports_prefect_or_flows():
    modules = [m.name for m in pkgutil.walk_packages(musicinterp.__path__, "musicinterp.")]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + (
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'prefect', 'flows', 'tasks'})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
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
        assert "flows" not in _imports(path), path
    for path in (ROOT / "musicinterp").rglob("*.py"):
        assert not _imports(path) & {"prefect", "flows", "tasks"}, path
