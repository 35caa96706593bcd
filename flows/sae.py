"""The SAE flows: train a TopK SAE per layer of a store (``sae-train``), and rank their features against
structure labels (``sae-rank``). The work is in musicinterp.sae; these read as the outline.

Reruns: training resumes from each layer's last checkpoint (musicinterp/sae/train.py), so rerunning a crashed
flow run with the same settings and output folder continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from musicinterp.sae import SAERankSpec, SAETrainSpec
from musicinterp_tasks import sae as t


def artifact_key(name: str, what: str) -> str:
    return f"{''.join(c if c.isalnum() else '-' for c in name.lower())}-{what}"


def default_out(spec: SAETrainSpec) -> str:
    """``{run folder}/sae-{fingerprint}`` beside the store: settings and store name the SAEs."""
    return str(Path(spec.store.rstrip("/")).parent / f"sae-{spec.fingerprint(10)}")


@flow(name="sae-train", persist_result=False)
def sae_train(spec: SAETrainSpec, out: str | None = None, with_loss: bool = True, name: str = "sae") -> dict[str, Any]:
    """Train (or resume) one TopK SAE per layer of ``spec.store``, then measure each on held-out clips.

    ``with_loss``: also measure the model's next-code loss with the layer replaced by the reconstruction
    (loads the model named in the store's config). Writes the SAEs in SAELens' layout and metrics.csv under ``out``.
    """
    logger = get_run_logger()
    out = out or default_out(spec)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "sae_train_spec.json").write_text(spec.model_dump_json(indent=2))
    rows = []
    for layer in spec.layers:
        trained = t.train_layer(spec, layer, out)
        rows.append(t.evaluate_layer(spec, layer, out, with_loss, wait_for=[trained]))
    records = t.write_metrics(rows, out)
    create_table_artifact(records, key=artifact_key(name, "sae-metrics"), description=f"{name}: SAE metrics per layer")
    lines = [f"# SAEs of {spec.store}", "", f"weights: {records[0]['weights'] if records else 'unknown'}", ""]
    lines += [
        f"- layer {r['layer']}: nMSE {r['nmse']}, explained variance {r['explained_variance']}, L0 {r['l0']}, "
        f"dead {r['dead_fraction']}, dense {r['dense_fraction']}, next-code loss clean {r['loss_clean']} / "
        f"spliced {r['loss_spliced']} / mean-ablated {r['loss_mean_ablated']} (recovered {r['loss_recovered']})"
        for r in records
    ]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "sae-summary"), description=f"{name}: SAEs")
    logger.info("SAEs of %s in %s", spec.store, out)
    return {"out": out, "layers": list(spec.layers), "metrics": records}


@flow(name="sae-rank", persist_result=False)
def sae_rank(
    store: str,
    sae_root: str,
    spec: SAERankSpec = SAERankSpec(),
    out: str | None = None,
    control_store: str | None = None,
    control_sae_root: str | None = None,
    name: str = "sae-rank",
) -> dict[str, Any]:
    """Rank the features of the SAEs in ``sae_root`` by how well each predicts the targets beyond the causal
    controls (screen on some sources, test on the others, BH over the tested family), and the same on the
    random-weight twin's store and SAEs (``control_store``, ``control_sae_root``) as the random-model control."""
    logger = get_run_logger()
    if (control_store is None) != (control_sae_root is None):
        raise ValueError("the random-model control needs both control_store and control_sae_root")
    out = out or str(Path(sae_root) / "rank")
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "sae_rank_spec.json").write_text(spec.model_dump_json(indent=2))
    parts = [t.rank.submit(store, sae_root, spec, out, "none", control_store)]
    if control_store is not None and control_sae_root is not None:
        parts.append(t.rank.submit(control_store, control_sae_root, spec, out, "random-model"))
    result = t.finalize([p.result() for p in parts], out, spec.analysis.alpha, store)
    create_table_artifact(
        result["top"], key=artifact_key(name, "sae-ranked"), description=f"{name}: top features per control"
    )
    lines = [f"# SAE features of {store}", ""]
    for control, s in result["summary"].items():
        lines.append(
            f"- {control}: {s['significant']} of {s['tested']} tested features significant "
            f"(q < {spec.analysis.alpha}), layers {s['layers']}"
        )
    lines += ["", f"Ranked table: {out}/ranked.csv; intervention targets: {out}/candidates.json"]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "sae-findings"), description=f"{name}: findings")
    logger.info("ranked SAE features of %s: %s", store, result["summary"])
    return {"out": out, "summary": result["summary"]}
