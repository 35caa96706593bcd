"""What the commands share: the console, the exit codes, settings files, the progress bar, the names
of the work pools, and the Prefect command and environment that ``server``, ``deploy`` and ``worker``
hand to the processes they start (built here and nowhere else)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

REPO = Path(__file__).resolve().parents[1]  # the checkout: deployments/ and the code the flow runs import
CONTROL_POOL = "musicinterp"  # benchmark parents, reruns, analysis (CPU)
GPU_POOL = "musicinterp-gpu"  # the shards: capture + annotation
POOL_TYPES = ("process", "docker", "kubernetes")

EXIT_OK = 0  # the command did what was asked
EXIT_FAILED = 1  # it ran, and what it ran (a run, a check, a validation) did not succeed
EXIT_USAGE = 2  # nothing ran: a bad config or settings file, no server, an unknown run or deployment

console = Console(stderr=True, soft_wrap=True)  # never break a path across lines


def error(message: object, code: int = EXIT_USAGE) -> int:
    """Print ``message`` in red on stderr and return ``code``, the command's exit status."""
    console.print(f"[red]{message}[/red]")
    return code


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def load_settings(path: str | None, model: Any, section: str) -> Any:
    """A settings model from YAML: the file holds a ``section:`` mapping (as in a run config) or its fields."""
    from pydantic import ValidationError

    from musicinterp.config import ConfigError, format_validation_error

    if not path:
        return model()
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return model.model_validate(data.get(section, data))
    except FileNotFoundError as e:
        raise ConfigError(f"settings file {path!r} does not exist") from e
    except ValidationError as e:
        raise ConfigError(format_validation_error(path, e)) from e


def prefect_command() -> list[str]:
    """The Prefect CLI of this interpreter (the venv's, whatever PATH says)."""
    return [sys.executable, "-m", "prefect"]


def prefect_env(api_url: str, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a Prefect process started for this shell (server, deploy, worker): ``base``
    (default: this process's environment) pointed at ``api_url``, with the server's usage telemetry off
    unless the user turned it on (it needs the internet), and ``extra`` over both."""
    base = os.environ if base is None else base
    return {
        **base,
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": base.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        **extra,
    }
