"""Capture into the Zarr store against the forward pass, nnsight and ``output_hidden_states``, in one process.

    python benchmarks/capture.py                      # musicgen-small shape (random weights), 10 s and 30 s clips
    python benchmarks/capture.py --json               # one JSON object (the 10 s clip's numbers at the top level)
    python benchmarks/capture.py --quick --json       # the tiny model, 2 s clips: what the test runs
    python benchmarks/capture.py --shard 4 --seconds 10 --repeats 2   # a whole shard, background writer on/off
    python benchmarks/capture.py --only options --seconds 10 --batch 1 2 # float16/int8 x autocast x batch
    python benchmarks/capture.py --only codecs --seconds 10            # the store's codec against the others

Per clip length, the four ways of getting every layer's residual stream are timed interleaved (one of each per
round, ``--repeats`` rounds, medians), on the same codes and text condition:

- ``forward``: the teacher-forced decoder forward pass alone, nothing kept (the baseline);
- ``capture``: ours: forward hooks keep each layer's frames as float16, then the clip is written into a real
  Zarr store (``write_clip`` + ``mark_complete``), i.e. what a shard does per clip after encoding;
- ``nnsight``: nnsight's trace with ``.save()`` on the input of the first decoder layer and every layer's
  output, kept in memory (float32, nothing written);
- ``hidden_states``: ``output_hidden_states=True``, the arrays cast and written into the same store;
- ``pipelined``: ``PIPELINE_CLIPS`` clips captured and written as ``capture_shard`` does with its writer thread
  (clip n written while n + 1 is captured), against as many forward passes (``forward_run``):
  ``pipelined_ratio``, the capture's cost when the write is behind compute.

Per option (``--only options``: float16 or int8 (``capture.reduce``), autocast off or on (``capture.autocast``),
each ``--batch`` size of equal-length clips per forward pass): bytes per clip, clips/s and GB/s written, the ratio
to forward-only throughput at the same batch and autocast, and to the device-to-host copy bandwidth measured in
the same run (``copy_gb_per_s``, ``copy_kind``: on a GPU a pinned, non-blocking copy; on the CPU a host memcpy,
since the activations already live in host memory). int8 rows carry their error against float16.

Ratios are ours over each: ``capture_ratio`` = capture / forward, ``nnsight_ratio`` = capture / nnsight,
``hidden_states_ratio`` = capture / hidden_states. Peak RSS is measured in fresh subprocesses that capture and
write 2 and 20 clips (memory must not grow with the clip count). The store's codec (``--only codecs``) is compared
with the alternatives on the same activations, float16 and int8, with the store's chunking: bytes on disk and
write speed, with zarr compressing its default number of chunks at once (each in a thread) and one at a time.
The model has random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musicinterp.capture import (
    AUTOCAST_DTYPE,
    capture_codes,
    capture_codes_batch,
    delayed_decoder_input,
    encode_audio,
    text_condition,
)
from musicinterp.config import CaptureSpec, ModelSpec
from musicinterp.frames import SAMPLE_RATE_HZ
from musicinterp.models import LoadedModel, load_model
from musicinterp.store import (
    ClipLayout,
    ClipWriter,
    StoreLayout,
    init_store,
    mark_complete,
    store_attrs,
    store_size_bytes,
    write_clip,
)

PIPELINE_CLIPS = 3  # clips per ``pipelined`` run: the writer thread's steady state, as in a shard


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE_HZ)) * 0.1).astype(np.float32)


def _store(
    url: str, loaded: LoadedModel, layers: tuple[int, ...], n_frames: int, n_clips: int, reduce: str = "none"
) -> None:
    clips = tuple(ClipLayout(f"c{i}", n_frames) for i in range(n_clips))
    layout = StoreLayout(clips, layers, loaded.hidden_size, loaded.num_codebooks, reduce=reduce)
    attrs = store_attrs(
        model=loaded.describe(),
        run_spec_json="{}",
        fingerprint="bench",
        capture=CaptureSpec(reduce=reduce).model_dump(),  # type: ignore[arg-type]
        package_version="bench",
    )
    init_store(url, layout, {}, attrs)


def _nnsight_capture(loaded: LoadedModel, kwargs: dict[str, Any], t: int) -> list[torch.Tensor]:
    from nnsight import NNsight

    traced = NNsight(loaded.model)
    saved: list[Any] = []
    with torch.no_grad(), traced.trace(**kwargs):
        layers = traced.decoder.model.decoder.layers
        saved.append(layers[0].input.save())
        for i in range(loaded.n_layers):
            out = layers[i].output
            saved.append((out[0] if isinstance(out, tuple) else out).save())
    return [s[0, 1 : t + 1] for s in saved]


def time_clip(loaded: LoadedModel, seconds: float, repeats: int) -> dict[str, Any]:
    """Median seconds of each way of getting the residual stream of one clip, interleaved."""
    spec = CaptureSpec()
    codes = encode_audio(loaded, _audio(seconds))
    t = codes.shape[-1]
    states, mask = text_condition(loaded, spec)
    kwargs = dict(
        encoder_outputs=(states,),
        attention_mask=mask,
        decoder_input_ids=delayed_decoder_input(loaded, codes),
        use_cache=False,
    )
    layers = tuple(range(loaded.n_layers + 1))
    times: dict[str, list[float]] = {
        k: [] for k in ("forward", "capture", "nnsight", "hidden_states", "write", "forward_run", "pipelined")
    }
    with tempfile.TemporaryDirectory() as tmp:
        url = f"{tmp}/bench.zarr"
        _store(url, loaded, layers, t, (2 + PIPELINE_CLIPS) * repeats)
        writer = ClipWriter(url)

        def forward() -> None:
            with torch.no_grad():
                loaded.model(**kwargs)

        def ours(i: int) -> None:
            cap = capture_codes(loaded, codes, spec)
            w0 = time.perf_counter()
            write_clip(url, f"c{i}", cap.resid, cap.codes)
            mark_complete(url, f"c{i}")
            times["write"].append(time.perf_counter() - w0)

        def hidden(i: int) -> None:
            with torch.no_grad():
                out = loaded.model(**kwargs, output_hidden_states=True)
            resid = torch.stack([h[0, 1 : t + 1] for h in out.decoder_hidden_states]).to(torch.float16).numpy()
            write_clip(url, f"c{i}", resid, codes.numpy())
            mark_complete(url, f"c{i}")

        def forward_run(i: int) -> None:
            for _ in range(PIPELINE_CLIPS):
                forward()

        def pipelined(i: int) -> None:
            """``PIPELINE_CLIPS`` clips as capture_shard runs them with its writer thread: clip n is written while
            n + 1 is captured, a queue of one clip, the flag after the arrays."""

            def write(name: str, cap: Any) -> None:
                write_clip(writer, name, cap.resid, cap.codes)
                mark_complete(writer, name)

            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = None
                for k in range(PIPELINE_CLIPS):
                    cap = capture_codes(loaded, codes, spec)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(write, f"c{2 * repeats + i * PIPELINE_CLIPS + k}", cap)
                pending.result()

        steps: list[tuple[str, Callable[[int], None]]] = [
            ("forward", lambda i: forward()),
            ("capture", ours),
            ("nnsight", lambda i: _nnsight_capture(loaded, kwargs, t)),
            ("hidden_states", hidden),
            ("forward_run", forward_run),
            ("pipelined", pipelined),
        ]
        forward()  # warm-up: first-call allocations are nobody's cost
        for r in range(repeats):
            for name, fn in steps:
                t0 = time.perf_counter()
                fn(r if name == "pipelined" else 2 * r + (name == "hidden_states"))
                times[name].append(time.perf_counter() - t0)
        raw = (loaded.n_layers + 1) * t * loaded.hidden_size * 2
        on_disk = store_size_bytes(url)
    med = {k: statistics.median(v) for k, v in times.items()}
    copy_gb_per_s = copy_bandwidth_gb_per_s(raw, next(loaded.model.parameters()).device)
    return {
        "option": "float16, batch 1",
        "bytes_per_clip": raw,
        "clips_per_s": 1 / med["capture"],
        "forward_clips_per_s": 1 / med["forward"],
        "throughput_over_forward": med["forward"] / med["capture"],
        "written_gb_per_s": raw / 1e9 / med["capture"],
        "copy_gb_per_s": copy_gb_per_s,
        "written_over_copy": raw / 1e9 / med["capture"] / copy_gb_per_s,
        "clip_seconds": seconds,
        "frames": t,
        "forward_s": med["forward"],
        "capture_s": med["capture"],
        "nnsight_s": med["nnsight"],
        "hidden_states_s": med["hidden_states"],
        "write_s": med["write"],
        "capture_ratio": med["capture"] / med["forward"],
        "pipelined_clips": PIPELINE_CLIPS,
        "pipelined_s": med["pipelined"],
        "forward_run_s": med["forward_run"],
        "pipelined_ratio": med["pipelined"] / med["forward_run"],
        "nnsight_ratio": med["capture"] / med["nnsight"],
        "hidden_states_ratio": med["capture"] / med["hidden_states"],
        "write_mb_per_s": raw / 1e6 / med["write"],
        "resid_mb_per_clip": raw / 1e6,
        "store_mb_for_all_clips": on_disk / 1e6,
        "compression_ratio": ((2 + PIPELINE_CLIPS) * repeats * raw) / max(on_disk, 1),
    }


def resid_bytes_per_clip(loaded: LoadedModel, frames: int, reduce: str) -> int:
    """Bytes a clip's activations take in host memory and in the store before compression: float16, or int8
    plus one float32 scale per (layer, feature)."""
    n = (loaded.n_layers + 1) * frames * loaded.hidden_size
    return n * 2 if reduce == "none" else n + (loaded.n_layers + 1) * loaded.hidden_size * 4


def time_option(
    loaded: LoadedModel, seconds: float, batch: int, repeats: int, reduce: str = "none", autocast: bool = False
) -> dict[str, Any]:
    """Clips per second of ``batch`` equal-length clips per forward pass: the forward pass alone (under the same
    autocast setting) against ``capture_codes_batch`` plus the clips' writes, interleaved, medians."""
    spec = CaptureSpec(reduce=reduce, autocast=autocast)  # type: ignore[arg-type]
    codes = [encode_audio(loaded, _audio(seconds, seed)) for seed in range(batch)]
    t = codes[0].shape[-1]
    states, mask = text_condition(loaded, spec)
    kwargs = dict(
        encoder_outputs=(states.expand(batch, -1, -1),),
        attention_mask=mask.expand(batch, -1),
        decoder_input_ids=torch.cat([delayed_decoder_input(loaded, c) for c in codes]),
        use_cache=False,
    )
    layers = tuple(range(loaded.n_layers + 1))
    times: dict[str, list[float]] = {"forward": [], "capture": [], "write": []}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"{tmp}/bench.zarr"
        _store(url, loaded, layers, t, batch * repeats, reduce)
        device = next(loaded.model.parameters()).device

        def forward() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=AUTOCAST_DTYPE, enabled=autocast):
                loaded.model(**kwargs)

        forward()  # warm-up
        for r in range(repeats):
            t0 = time.perf_counter()
            forward()
            times["forward"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            caps = capture_codes_batch(loaded, codes, spec)
            w0 = time.perf_counter()
            for j, cap in enumerate(caps):
                write_clip(url, f"c{r * batch + j}", cap.resid, cap.codes, cap.quant)
                mark_complete(url, f"c{r * batch + j}")
            times["write"].append(time.perf_counter() - w0)
            times["capture"].append(time.perf_counter() - t0)
        on_disk = store_size_bytes(url)
    med = {k: statistics.median(v) for k, v in times.items()}
    raw = resid_bytes_per_clip(loaded, t, reduce)
    row: dict[str, Any] = {
        "option": f"{'int8' if reduce == 'int8' else 'float16'}{', autocast' if autocast else ''}, batch {batch}",
        "reduce": reduce,
        "autocast": autocast,
        "batch": batch,
        "clip_seconds": seconds,
        "bytes_per_clip": raw,
        "store_bytes_per_clip": on_disk / (batch * repeats),
        "clips_per_s": batch / med["capture"],
        "forward_clips_per_s": batch / med["forward"],
        "throughput_over_forward": med["forward"] / med["capture"],
        "written_gb_per_s": batch * raw / 1e9 / med["capture"],
        "write_s": med["write"],
    }
    if caps[0].quant is not None:
        row["int8_max_abs_error"] = float(max(c.quant.max_abs_error.max() for c in caps if c.quant is not None))
        row["int8_rel_rms_error"] = float(max(c.quant.rel_rms_error.max() for c in caps if c.quant is not None))
    return row


def copy_bandwidth_gb_per_s(nbytes: int, device: torch.device, repeats: int = 5) -> float:
    """Device-to-host copy bandwidth for one clip's float16 activations (median of ``repeats``).

    On a GPU: a pinned host buffer, ``copy_(non_blocking=True)`` then a synchronise. On the CPU the model's
    tensors are already in host memory, so this is a plain memcpy: the ceiling a host link cannot beat.
    """
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device).normal_()
    dst = torch.empty(src.shape, dtype=src.dtype, pin_memory=device.type == "cuda")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=device.type == "cuda")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return nbytes / 1e9 / statistics.median(times)


def _codecs(typesize: int) -> dict[str, Any]:
    """The store's codec (``STORE_COMPRESSORS``) and the alternatives, for values of ``typesize`` bytes."""
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    def blosc(cname: str, level: int) -> list[Any]:
        return [BloscCodec(cname=cname, clevel=level, shuffle=BloscShuffle.shuffle, typesize=typesize)]

    return {
        "zstd level 0 (zarr's default)": [ZstdCodec(level=0)],
        "uncompressed": None,
        "zstd level 1": [ZstdCodec(level=1)],
        "zstd level 3": [ZstdCodec(level=3)],
        "blosc lz4 + byte shuffle": blosc("lz4", 5),
        "blosc zstd 1 + byte shuffle": blosc("zstd", 1),
    }


def codec_table(loaded: LoadedModel, seconds: float, repeats: int = 2) -> list[dict[str, Any]]:
    """The store's codec against the alternatives on one clip's real activations, float16 and int8, with the
    store's chunking: bytes on disk (ratio) and write speed, with zarr's chunk concurrency at its default
    (``async.concurrency``: chunks compressed at once, each in a thread) and at 1 (one chunk at a time)."""
    import zarr

    from musicinterp.quantize import quantize_host

    cap = capture_codes(loaded, encode_audio(loaded, _audio(seconds)), CaptureSpec())
    layers = tuple(range(loaded.n_layers + 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for reduce, a in (("none", cap.resid), ("int8", quantize_host(cap.resid)[0])):
            layout = StoreLayout((ClipLayout("c", a.shape[1]),), layers, loaded.hidden_size, 4, reduce=reduce)
            chunks = layout.resid_chunks[1:]
            for name, compressors in _codecs(a.dtype.itemsize).items():
                speed: dict[int, float] = {}
                size = 0
                for concurrency in (1, int(zarr.config.get("async.concurrency"))):
                    times = []
                    for r in range(repeats):
                        path = Path(tmp) / f"{reduce}-{len(rows)}-{concurrency}-{r}.zarr"
                        arr = zarr.create_array(
                            str(path), shape=a.shape, chunks=chunks, dtype=a.dtype, compressors=compressors
                        )
                        with zarr.config.set({"async.concurrency": concurrency}):
                            t0 = time.perf_counter()
                            arr[:] = a
                            times.append(time.perf_counter() - t0)
                        size = sum(f.stat().st_size for f in path.rglob("c/**/*") if f.is_file())
                    speed[concurrency] = a.nbytes / 1e6 / statistics.median(times)
                one, many = speed[1], speed[max(speed)]
                rows.append(
                    {
                        "dtype": "float16" if reduce == "none" else "int8",
                        "codec": name,
                        "ratio": a.nbytes / size,
                        "write_mb_per_s": many,
                        "write_mb_per_s_one_chunk_at_a_time": one,
                        "chunk_concurrency": max(speed),
                        "chunks": int(np.prod([-(-n // c) for n, c in zip(a.shape, chunks, strict=True)])),
                    }
                )
    return rows


def time_shard(model: str, seconds: float, n_clips: int, repeats: int) -> dict[str, Any]:
    """Wall time of a whole shard of ``n_clips`` clips (``capture_shard``: read, encode, capture, write, flag,
    record), with the store writes in one background thread (clip n written while n + 1 is captured) and
    without (written in the capturing thread); interleaved, medians. The model is loaded once, before timing."""
    import soundfile as sf

    from musicinterp import run
    from musicinterp.config import RunSpec
    from musicinterp.run.capture import cached_model

    times: dict[bool, list[float]] = {True: [], False: []}
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "audio"
        audio.mkdir()
        for i in range(n_clips):
            sf.write(audio / f"{i}.wav", _audio(seconds, seed=i), SAMPLE_RATE_HZ)
        spec = RunSpec(
            name="bench",
            model=ModelSpec(source="offline", name=model),
            slice={"name": "bench", "sources": [{"kind": "audio_dir", "path": str(audio)}], "n_shards": 1},
            annotate=False,
        )
        cached_model(spec.model, spec.capture.device)
        warm = run.prepare_run(spec, f"{tmp}/warm-up")  # first-call allocations are nobody's cost
        run.capture_shard(spec.model, spec.capture, warm.paths, 0, overlap_writes=False)
        for r in range(repeats):
            for overlap in (True, False) if r % 2 == 0 else (False, True):  # alternate which goes first
                prepared = run.prepare_run(spec, f"{tmp}/out_{r}_{overlap}")
                t0 = time.perf_counter()
                result = run.capture_shard(spec.model, spec.capture, prepared.paths, 0, overlap_writes=overlap)
                times[overlap].append(time.perf_counter() - t0)
                if overlap:
                    stages = {"encode_s": result.encode_s, "capture_s": result.capture_s, "write_s": result.write_s}
    overlapped, inline = statistics.median(times[True]), statistics.median(times[False])
    from musicinterp.run.capture import writes_can_overlap

    return {
        "shard_default_overlaps": writes_can_overlap(spec.capture.device),
        "shard_clips": n_clips,
        "shard_clip_seconds": seconds,
        "shard_overlapped_s": overlapped,
        "shard_inline_s": inline,
        "shard_overlap_ratio": overlapped / inline,
        "shard_overlapped_runs_s": times[True],
        "shard_inline_runs_s": times[False],
        "shard_stages_overlapped": stages,
    }


def peak_rss_mb(model: str, seconds: float, n_clips: int) -> float:
    """Peak RSS of a fresh process that captures and writes ``n_clips`` clips one after another."""
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", model, str(seconds), str(n_clips)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _rss_child(model: str, seconds: float, n_clips: int) -> None:
    loaded = load_model(ModelSpec(source="offline", name=model))
    spec = CaptureSpec()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"{tmp}/rss.zarr"
        n_frames = encode_audio(loaded, _audio(seconds)).shape[-1]
        _store(url, loaded, tuple(range(loaded.n_layers + 1)), n_frames, n_clips)
        for i in range(n_clips):
            codes = encode_audio(loaded, _audio(seconds, seed=i))
            cap = capture_codes(loaded, codes, spec)
            write_clip(url, f"c{i}", cap.resid, cap.codes)
            mark_complete(url, f"c{i}")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # kB on Linux


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        _rss_child(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, choices=["tiny", "musicgen-small"])
    ap.add_argument("--seconds", type=float, nargs="+", default=None)
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (medians); default 4, --quick 2")
    ap.add_argument("--rss-seconds", type=float, default=None, help="clip length of the RSS runs (default 2 s)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="the tiny model and 2 s clips (for the test)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument(
        "--shard",
        type=int,
        default=None,
        metavar="N",
        help="only time a shard of N clips (of the first --seconds) with and without the background writer",
    )
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes to time (default 1 4; --quick 1 2)")
    ap.add_argument(
        "--only",
        choices=["options", "codecs"],
        default=None,
        help="only the per-option table (reduce x autocast x --batch) or only the codec table",
    )
    args = ap.parse_args()
    model = args.model or ("tiny" if args.quick else "musicgen-small")
    seconds = args.seconds or ([2.0] if args.quick else [10.0, 30.0])
    repeats = args.repeats or (2 if args.quick else 4)
    rss_seconds = args.rss_seconds or 2.0
    batches = args.batch or ([1, 2] if args.quick else [1, 4])
    torch.set_num_threads(args.threads)
    if args.shard:
        shard = {"model": f"offline/{model}", "weights": "random", "torch_threads": torch.get_num_threads()}
        shard |= {"repeats": repeats, **time_shard(model, seconds[0], args.shard, repeats)}
        print(json.dumps(shard) if args.json else "\n".join(f"{k}: {v}" for k, v in shard.items()))
        return
    loaded = load_model(ModelSpec(source="offline", name=model))
    device = next(loaded.model.parameters()).device.type
    if args.only:
        part = time_options(loaded, seconds[0], batches, repeats) if args.only == "options" else {}
        part |= {"codecs": codec_table(loaded, seconds[0])} if args.only == "codecs" else {}
        part |= {"model": f"offline/{model}", "device": device, "torch_threads": torch.get_num_threads()}
        print(json.dumps(part) if args.json else _tables(part))
        return
    rows = [time_clip(loaded, s, repeats) for s in seconds]
    result: dict[str, Any] = {
        **rows[0],
        "model": f"offline/{model}",
        "weights": "random",
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "repeats": repeats,
        "by_clip_length": rows,
        "peak_rss_mb_2_clips": peak_rss_mb(model, rss_seconds, 2),
        "peak_rss_mb_20_clips": peak_rss_mb(model, rss_seconds, 20),
        "rss_clip_seconds": rss_seconds,
        "codecs": codec_table(loaded, seconds[0]),
        **time_options(loaded, seconds[0], batches, repeats),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"model offline/{model} (weights: random), {loaded.n_layers + 1} layers x {loaded.hidden_size}, "
        f"torch threads {result['torch_threads']}, medians of {repeats} interleaved rounds"
    )
    print("seconds  forward_s  capture_s  nnsight_s  hidden_s  write_s  capture/fwd  /nnsight  /hidden  write MB/s")
    for r in rows:
        print(
            f"{r['clip_seconds']:7.1f}  {r['forward_s']:9.2f}  {r['capture_s']:9.2f}  {r['nnsight_s']:9.2f}  "
            f"{r['hidden_states_s']:8.2f}  {r['write_s']:7.2f}  {r['capture_ratio']:11.3f}  {r['nnsight_ratio']:8.3f}  "
            f"{r['hidden_states_ratio']:7.3f}  {r['write_mb_per_s']:10.0f}"
        )
    print("seconds  option            MB/clip  clips/s  GB/s written  throughput/forward  written/copy (copy GB/s)")
    for r in rows:
        print(
            f"{r['clip_seconds']:7.1f}  {r['option']:<16}  {r['bytes_per_clip'] / 1e6:7.1f}  {r['clips_per_s']:7.3f}  "
            f"{r['written_gb_per_s']:12.4f}  {r['throughput_over_forward']:18.3f}  "
            f"{r['written_over_copy']:.5f} ({r['copy_gb_per_s']:.1f}{', memcpy' if device == 'cpu' else ''})"
        )
    print(
        f"peak RSS, {rss_seconds:g} s clips: 2 clips {result['peak_rss_mb_2_clips']:.0f} MB, "
        f"20 clips {result['peak_rss_mb_20_clips']:.0f} MB"
    )
    print(_tables(result))


def time_options(loaded: LoadedModel, seconds: float, batches: list[int], repeats: int) -> dict[str, Any]:
    """Every option (float16 / int8, autocast off / on, each batch size) and the copy bandwidth, in one run.

    ``batches``: the float16 rows without autocast (the JSON key kept from before the options existed)."""
    options = [
        time_option(loaded, seconds, b, repeats, reduce, autocast)
        for reduce in ("none", "int8")
        for autocast in (False, True)
        for b in batches
    ]
    device = next(loaded.model.parameters()).device
    copy = copy_bandwidth_gb_per_s(options[0]["bytes_per_clip"], device)
    for row in options:
        row["copy_gb_per_s"] = copy
        row["written_over_copy"] = row["written_gb_per_s"] / copy
    return {
        "options": options,
        "batches": [r for r in options if r["reduce"] == "none" and not r["autocast"]],
        "copy_gb_per_s": copy,
        "copy_kind": "device-to-host, pinned, non_blocking" if device.type == "cuda" else "host memcpy (CPU run)",
    }


def _tables(result: dict[str, Any]) -> str:
    lines = []
    if "options" in result:
        lines.append(
            f"per option, {result['options'][0]['clip_seconds']:g} s clips; copy {result['copy_gb_per_s']:.1f} GB/s "
            f"({result['copy_kind']})"
        )
        lines.append("option                       MB/clip  clips/s  fwd clips/s  /forward  GB/s written  /copy")
        for r in result["options"]:
            lines.append(
                f"{r['option']:<28} {r['bytes_per_clip'] / 1e6:7.2f}  {r['clips_per_s']:7.3f}  "
                f"{r['forward_clips_per_s']:11.3f}  {r['throughput_over_forward']:8.3f}  "
                f"{r['written_gb_per_s']:12.4f}  {r['written_over_copy']:.5f}"
            )
    if "codecs" in result:
        lines.append("dtype    codec                            ratio  write MB/s  (one chunk at a time)")
        for c in result["codecs"]:
            lines.append(
                f"{c['dtype']:<8} {c['codec']:<32} {c['ratio']:5.2f}  {c['write_mb_per_s']:10.0f}  "
                f"({c['write_mb_per_s_one_chunk_at_a_time']:.0f})"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
