"""The benchmark scripts run and report what the README quotes (their numbers are measured, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_capture_benchmark__quick_json_has_the_ratios_and_memory_stays_flat_in_clip_count():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "capture.py"), "--quick", "--json", "--repeats", "1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in (
        "forward_s",
        "capture_s",
        "capture_ratio",
        "nnsight_ratio",
        "hidden_states_ratio",
        "peak_rss_mb_2_clips",
        "peak_rss_mb_20_clips",
        "write_mb_per_s",
        "clip_seconds",
        "bytes_per_clip",
        "clips_per_s",
        "written_gb_per_s",
        "throughput_over_forward",
        "copy_gb_per_s",
        "written_over_copy",
    ):
        assert result[key] > 0, key
    assert result["weights"] == "random"
    assert abs(result["capture_ratio"] - result["capture_s"] / result["forward_s"]) < 1e-9
    assert result["pipelined_clips"] == 3 and result["forward_run_s"] > 0
    assert abs(result["pipelined_ratio"] - result["pipelined_s"] / result["forward_run_s"]) < 1e-9
    # capturing 20 clips holds one clip at a time: the peak is within 100 MB of capturing 2
    assert result["peak_rss_mb_20_clips"] - result["peak_rss_mb_2_clips"] < 100
    codecs = {c["codec"] for c in result["codecs"]}
    assert "uncompressed" in codecs and len(codecs) >= 3
    assert {c["dtype"] for c in result["codecs"]} == {"float16", "int8"}
    assert all(c["ratio"] > 0 and c["write_mb_per_s_one_chunk_at_a_time"] > 0 for c in result["codecs"])
    assert [b["batch"] for b in result["batches"]] == [1, 2]
    assert all(b["clips_per_s"] > 0 and b["throughput_over_forward"] > 0 for b in result["batches"])
    # every option (reduce x autocast x batch) in the same run, with the copy bandwidth it is compared to
    options = {(o["reduce"], o["autocast"], o["batch"]): o for o in result["options"]}
    assert set(options) == {(r, a, b) for r in ("none", "int8") for a in (False, True) for b in (1, 2)}
    for o in options.values():
        assert o["clips_per_s"] > 0 and o["written_gb_per_s"] > 0 and o["written_over_copy"] > 0
    assert result["copy_kind"] == "host memcpy (CPU run)" and result["copy_gb_per_s"] > 0
    # int8 halves the bytes (plus its scales) and says how far it is from float16
    assert options[("int8", False, 1)]["bytes_per_clip"] < 0.6 * options[("none", False, 1)]["bytes_per_clip"]
    assert 0 < options[("int8", False, 1)]["int8_rel_rms_error"] < 0.01


def test_capture__equals_nnsight_on_every_layer(tiny_model):
    """Our hooks keep exactly what a peer library's trace saves (the benchmark compares like with like)."""
    import numpy as np
    import torch
    from nnsight import NNsight

    from musicinterp.capture import capture_codes, delayed_decoder_input, encode_audio, text_condition
    from musicinterp.config import CaptureSpec

    audio = (np.random.default_rng(3).standard_normal(32000) * 0.1).astype(np.float32)
    codes = encode_audio(tiny_model, audio)
    t = codes.shape[-1]
    states, mask = text_condition(tiny_model, CaptureSpec())
    ours = capture_codes(tiny_model, codes, CaptureSpec(), dtype=torch.float32).resid
    traced = NNsight(tiny_model.model)
    saved: list = []
    with (
        torch.no_grad(),
        traced.trace(
            encoder_outputs=(states,),
            attention_mask=mask,
            decoder_input_ids=delayed_decoder_input(tiny_model, codes),
            use_cache=False,
        ),
    ):
        layers = traced.decoder.model.decoder.layers
        saved.append(layers[0].input.save())
        for i in range(tiny_model.n_layers):
            out = layers[i].output
            saved.append((out[0] if isinstance(out, tuple) else out).save())
    theirs = torch.stack([s[0, 1 : t + 1] for s in saved]).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_analysis_speed__quick_json_reports_the_grid_as_a_multiple_of_one_read():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "analysis_speed.py"),
            "--quick",
            "--json",
            "--estimators",
            "ridge",
            "ridge-direct",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["preset"] == "quick" and result["read_s"] > 0 and result["probes"] == 12
    ridge = result["estimators"]["ridge"]
    assert abs(ridge["grid_over_read"] - ridge["grid_s"] / result["read_s"]) < 1e-9
    assert 0 <= ridge["eigh_s"] <= ridge["grid_s"] and ridge["top_self_time"]
    assert ridge["within_10_reads"] == (ridge["with_reduce_over_read"] <= 10)
    same = result["ridge_vs_direct"]  # the fast path's table against the previous path's, same permutations
    assert max(v for k, v in same.items() if k.startswith("max_abs_diff")) < 1e-9 and same["speedup"] > 0


def test_capture_benchmark__shard_mode_times_the_writer_thread_on_and_off():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "capture.py"),
            "--quick",
            "--json",
            "--shard",
            "2",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shard_clips"] == 2 and result["shard_overlapped_s"] > 0 and result["shard_inline_s"] > 0
    assert abs(result["shard_overlap_ratio"] - result["shard_overlapped_s"] / result["shard_inline_s"]) < 1e-9
    assert set(result["shard_stages_overlapped"]) == {"encode_s", "capture_s", "write_s"}


def test_causal_speed__quick_json_has_finite_ratios():
    """A smoke check of benchmarks/causal_speed.py (the causal known answers are in tests/test_causal.py)."""
    import math

    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "causal_speed.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["weights"] == "trained-here" and result["pieces"] == 2 and result["forward_s"] > 0
    for key in (
        "hooks_idle_ratio",
        "ablate_k1_ratio",
        "ablate_k4_ratio",
        "patch_k4_ratio",
        "patch_whole_ratio",
        "per_control_ratio",
        "candidate_ratio",
        "generation_hooks_ratio",
        "generation_over_forward",
    ):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert abs(result["ablate_k1_ratio"] - result["ablate_k1_s"] / result["forward_s"]) < 1e-9
