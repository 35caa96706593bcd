"""What the commands share: the console, the exit codes, settings files, the progress bar, the names
of the work pools, and the Prefect command and environment that ``server``, ``deploy`` and ``worker``
hand to the processes they start (built here and nowhere else)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

REPO = Path(__file__).resolve().parents[1]  # the checkout: deployments/ and the code the flow runs import
CONTROL_POOL = "musicinterp"  # benchmark parents, reruns, analysis (CPU)
GPU_POOL = "musicinterp-gpu"  # the shards: capture + annotation
POOL_TYPES = ("process", "docker", "kubernetes")

EXIT_OK = 0  # the command did what was asked
EXIT_FAILED = 1  # it ran, and what it ran (a run, a check, a validation) did not succeed
EXIT_USAGE = 2  # nothing ran: a bad config or settings file, no server, an unknown run or deployment
# stopped by a signal: 128 + its number, as shells report it (130 Ctrl-C / SIGINT, 143 SIGTERM)
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
CLEANUP_S = 5.0  # longest wait for the temporary Prefect server and exit handlers once stopped

console = Console(stderr=True, soft_wrap=True)  # never break a path across lines


def error(message: object, code: int = EXIT_USAGE) -> int:
    """Print ``message`` in red on stderr and return ``code``, the command's exit status."""
    console.print(f"[red]{message}[/red]")
    return code


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so that both stop a command the
    same way (Prefect's engine re-raises both)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` in the main thread while this is active (Ctrl-C raises
    KeyboardInterrupt already); elsewhere, or outside the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_temporary_servers(grace_s: float = CLEANUP_S) -> None:
    """Stop the temporary Prefect server an in-process flow started (if any), now rather than at exit:
    SIGTERM, then SIGKILL once ``grace_s`` has passed. Done here rather than by the server's own ``stop()``,
    whose five-second wait a busy machine can outlast: this process would then exit first and leave the
    server running (seen in CI, the server holding the run's stderr open)."""
    module = sys.modules.get("prefect.server.api.server")
    if module is None:
        return
    servers = list(getattr(module.SubprocessASGIServer, "_instances", {}).values())
    procs = [proc for server in servers if (proc := getattr(server, "server_process", None)) is not None]
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2.0)
    for server in servers:
        server.server_process = None  # stopped: its own exit handler has nothing left to do


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` at once: threads still computing (Prefect's task runners, a flow run in
    a thread) would otherwise hold it open until they finish. Stops the temporary server first, then runs
    the exit handlers for at most CLEANUP_S."""
    import atexit

    stop_temporary_servers()  # bounded: SIGKILL after CLEANUP_S
    handlers = threading.Thread(target=atexit._run_exitfuncs, daemon=True)
    handlers.start()
    handlers.join(CLEANUP_S)
    # a flow still running in a thread may have started another temporary server meanwhile (Prefect's client
    # starts one on demand when its API call finds none): it would outlive this process, so it goes too
    stop_temporary_servers(grace_s=0.0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def stop_process_group(proc: subprocess.Popen, signum: int, grace_s: float) -> int:
    """Send ``signum`` to the process group of ``proc`` (started with ``start_new_session=True``), wait
    ``grace_s``, then SIGKILL the group; returns its exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def interrupted_code(e: KeyboardInterrupt) -> int:
    """The exit status of a command stopped by ``e``: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + e.signum if isinstance(e, Interrupted) else EXIT_INTERRUPTED


def quiet_essentia(verbose: bool) -> None:
    """Essentia prints INFO lines when its algorithms load; off unless ``verbose`` (call before annotating)."""
    if verbose:
        return
    import essentia

    essentia.log.infoActive = False


def is_terminal() -> bool:
    """Bars and live displays only on a terminal; piped output is one line per stage."""
    return console.is_terminal


def progress_bar(disable: bool = False) -> Progress:
    """Bars with elapsed time and an ETA, on stderr; ``disable`` draws nothing (piped output)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
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
