"""The intervene flow: a causal experiment on the pair toy (interventions, matched controls, paired statistics).

Outline: run the experiment into ``{out}/{name}-{fingerprint}``, then publish the results table and the
findings (with the figure) as artifacts. ``musicinterp intervene`` (cli/intervene.py) runs it in-process.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from musicinterp.causal.spec import InterventionSpec, experiment_folder
from musicinterp_tasks import causal as t


def _key(name: str, what: str) -> str:
    return f"{''.join(c if c.isalnum() else '-' for c in name.lower())}-{what}"


@flow(name="intervene", persist_result=False)
def intervene(spec: InterventionSpec = InterventionSpec(), out: str = "runs") -> dict[str, Any]:
    """Do the candidate directions carry what the model uses? Ablate and patch them (and matched random
    controls) on twin pairs of the pair toy, the trained model and its random twin; effects on the planned
    event and on fluency with cluster-bootstrap CIs, sign-flip p and BH."""
    folder = str(experiment_folder(spec, out))
    result = t.experiment(spec, folder)
    create_table_artifact(
        t.table_records(folder),
        key=_key(spec.name, "causal-results"),
        description=f"{spec.name}: effects on the onset loss and on fluency, candidates vs matched controls",
    )
    create_markdown_artifact(
        t.findings_artifact(folder), key=_key(spec.name, "causal-findings"), description=f"{spec.name}: findings"
    )
    get_run_logger().info("causal experiment %s: %d rows in %s", spec.name, result["n_rows"], folder)
    return result
