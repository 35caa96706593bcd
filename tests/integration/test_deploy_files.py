"""deployments/ and the ops commands without a server: the files are what `musicinterp deploy` needs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from musicinterp_cli import build_parser
from musicinterp_cli.common import CONTROL_POOL, GPU_POOL, POOL_TYPES, REPO
from musicinterp_cli.deploy import PREFECT_FILE, deployable

PLACEHOLDER = re.compile(r"\{\{\s*([\w.$-]+)\s*\}\}")


def _placeholders(obj) -> set[str]:
    if isinstance(obj, dict):
        return set().union(*(_placeholders(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_placeholders(v) for v in obj)) if obj else set()
    return set(PLACEHOLDER.findall(obj)) if isinstance(obj, str) else set()


def _resolved(kind: str) -> dict:
    """The job configuration as a worker would build it from the pool's defaults (Prefect's templating)."""
    from prefect.utilities.templating import apply_values

    template = json.loads((REPO / "deployments/pools" / f"{kind}.json").read_text())
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    return apply_values(template["job_configuration"], defaults)


def test_prefect_yaml__every_deployment_has_its_flow_and_pool():
    config = yaml.safe_load(PREFECT_FILE.read_text())
    names = {d["name"]: d for d in config["deployments"]}
    assert {"benchmark", "benchmark-shard", "rerun-failed-shards", "analysis"} <= set(names)
    assert names["benchmark-shard"]["work_pool"]["name"] == GPU_POOL
    assert {names[n]["work_pool"]["name"] for n in ("benchmark", "rerun-failed-shards", "analysis")} == {CONTROL_POOL}
    assert names["benchmark"]["parameters"]["dispatch"] == "deployments"
    (step,) = config["pull"]
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $MUSICINTERP_HOME }}"}}
    ok, skipped = deployable()
    assert {d["name"] for d in ok} >= {"benchmark", "benchmark-shard", "rerun-failed-shards"}, skipped


@pytest.mark.parametrize("kind", POOL_TYPES)
def test_pool_template__every_placeholder_is_a_variable(kind):
    template = json.loads((REPO / "deployments/pools" / f"{kind}.json").read_text())
    variables = set(template["variables"]["properties"])
    assert _placeholders(template["job_configuration"]) <= variables


def test_gpu_pool_templates__ask_for_a_gpu():
    docker = _resolved("docker")
    (request,) = docker["container_create_kwargs"]["device_requests"]
    assert request["count"] == 1 and request["capabilities"] == [["gpu"]]
    assert docker["env"]["MUSICINTERP_HOME"] == "/opt/musicinterp"
    k8s = _resolved("kubernetes")
    (container,) = k8s["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1


def test_benchmark_parameters__are_a_form_of_the_run_config():
    from prefect.utilities.callables import parameter_schema

    from musicinterp_flows.benchmark import benchmark
    from musicinterp_flows.rerun import rerun_failed_shards

    schema = parameter_schema(benchmark).model_dump()
    assert {"spec", "out", "dispatch", "only_shards"} <= set(schema["properties"])
    run_spec = schema["definitions"]["RunSpec"]["properties"]
    assert {"name", "model", "slice", "capture", "annotate"} <= set(run_spec)
    assert set(parameter_schema(rerun_failed_shards).model_dump()["properties"]) == {"run_id", "shards"}


def test_ops_commands__are_registered():
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"server", "deploy", "worker", "submit", "status", "rerun"} <= set(sub.choices)
    args = parser.parse_args(["server"])
    assert args.host == "127.0.0.1"  # loopback unless asked otherwise


def test_submit__without_a_server_says_how_to_get_one_and_starts_none(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "musicinterp_cli", "submit", str(REPO / "configs/demo.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "PREFECT_API_URL" in proc.stderr and "musicinterp server" in proc.stderr
    assert "ephemeral" not in proc.stderr.lower() and "temporary" not in proc.stderr.lower()
    assert not (Path(tmp_path) / "prefect.db").exists()  # no throwaway server was started


def test_compose__postgres_server_and_workers_and_nothing_published_beyond_loopback():
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "server", "deploy", "worker-control", "worker-gpu"} <= set(services)
    for name, svc in services.items():
        if "build" in svc:
            assert (REPO / "docker" / svc["build"]["context"] / svc["build"]["dockerfile"]).exists(), name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert "postgresql+asyncpg://" in services["server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    (gpu,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "musicinterp-gpu" in services["worker-gpu"]["command"]
    worker = (REPO / "docker/Dockerfile.worker").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in worker and "torch==${TORCH_VERSION}" in worker
    assert "import essentia" in worker and "MUSICINTERP_HOME=/opt/musicinterp" in worker
