"""Every ```python block of README.md runs, in order, in one namespace, against a real run.

The README writes a run folder as ``runs/demo-<fingerprint>``; here that text is replaced by the folder of
a small run made by the test (tests/run_factories.py: the tiny offline model on four synthetic pieces).
A block that is not meant to run (it needs the Hub, a GPU, or hours) is fenced ```python no-run; the test
lists those too, so that marking a block is a visible decision and not a way to hide a broken one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from run_factories import small_run

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```\s*$", re.S | re.M)
PLACEHOLDER = "runs/demo-<fingerprint>"


def readme_blocks() -> list[tuple[str, str]]:
    """(info string after ``python``, code) of every python block, in README order."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(README.read_text())]


def test_readme__has_python_blocks_and_marks_the_ones_that_do_not_run():
    blocks = readme_blocks()
    assert blocks, "README.md has no ```python block"
    assert {info for info, _ in blocks} <= {"", "no-run"}, "unknown fence info: use ```python or ```python no-run"
    assert sum(info == "" for info, _ in blocks) >= 2  # the xarray snippet and the Python API at least


def test_readme__every_python_block_runs_against_a_real_run(monkeypatch, tmp_path):
    root = small_run()
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    namespace: dict = {"__name__": "__readme__"}
    for i, (info, code) in enumerate(readme_blocks()):
        if info == "no-run":
            continue
        code = code.replace(PLACEHOLDER, str(root))
        try:
            exec(compile(code, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
        except Exception as e:  # noqa: BLE001 - say which block broke, with the cause chained
            pytest.fail(f"README python block {i} failed: {type(e).__name__}: {e}\n---\n{code}")
    assert namespace["x"].dtype.name == "float32" and namespace["x"].ndim == 2
