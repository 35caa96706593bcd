"""What the fault tests (a worker killed, the server restarted) share: the config on disk, an uninterrupted run
of it to compare against, the run planned for the stack, and reading a CLI's ``--json`` output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from musicinterp.config import RunSpec
from musicinterp.run import prepare_run, run_inline


def cli_json(proc) -> dict:
    """The JSON a ``musicinterp ... --json`` command printed; an assertion naming its output otherwise."""
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"not JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from e


def planned_run(folder: Path, config: dict[str, Any]):
    """``config`` written to ``folder`` as YAML, run inline once (the uninterrupted reference) and planned under
    ``folder/runs`` for the stack. Returns (spec, config path, clean run's summary, out, prepared run)."""
    spec = RunSpec.model_validate(config)
    folder.mkdir()
    path = folder / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    clean = run_inline(spec, str(folder / "clean"))
    assert clean.ok, clean.failed
    out = str(folder / "runs")
    return spec, path, clean, out, prepare_run(spec, out)
