"""What a generation found, in words: counts, cross-recurrence, and the pair toy's A-return rates."""

from __future__ import annotations

import numpy as np

from musicinterp.config import ModelSpec
from musicinterp.generate.toy_return import return_rates
from musicinterp.run.capture import cached_model
from musicinterp.run.paths import RunPaths
from musicinterp.store import open_store, weights_note


def generation_markdown(root: str, model: ModelSpec | None = None, device: str = "cpu") -> str:
    """Markdown summary of the continuations in the run folder ``root`` (weights kind named first).

    With ``model`` (the run's), cue pieces also get the pair toy's A-return table (its EnCodec encodes
    each piece's A and C versions).
    """
    ds = open_store(RunPaths(root).store)
    weights = str(ds.attrs.get("weights"))
    done = ds["gen_complete"].values
    lines = [
        f"# Generation: {ds.attrs.get('run_name', '')}",
        "",
        f"**{weights_note(weights)}**",
        "",
        f"Store `{RunPaths(root).store}`; settings `{ds.attrs.get('generation_json')}`.",
        f"{int(done.sum())} of {done.size} continuations complete ({ds.sizes['clip']} clips x seeds "
        f"{[int(s) for s in ds['seed'].values]}); {int(ds['gen_annotated'].values.sum())} annotated.",
    ]
    if "gen_xrec" in ds and ds["gen_annotated"].values.any():
        ann = ds["gen_annotated"].values
        xrec = ds["gen_xrec"].values[ann]
        lines.append(
            f"Cross-recurrence: material of the prompt recurs in {xrec.mean():.3f} of the continuation frames "
            f"(per continuation: median {np.median(xrec.mean(axis=1)):.3f})."
        )
    if model is not None:
        try:
            rates = return_rates(root, cached_model(model, device)[0])
        except ValueError:
            pass  # not a generation of cue pieces over their return window
        else:
            lines += ["", rates.markdown(weights)]
    return "\n".join(lines)
