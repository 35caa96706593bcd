"""Capture speed against the plain forward pass, measured in the same process.

    python benchmarks/capture_speed.py --model musicgen-small --seconds 10

Prints, per clip length: EnCodec encode time, the decoder forward pass without capture (the
baseline), teacher-forced capture of every layer (hooks + float16 copies), the store write, the
ratio capture/forward and the real-time factor (encode + capture + write) / audio duration.
The model has random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from musicinterp.capture import capture_codes, delayed_decoder_input, encode_audio, text_condition
from musicinterp.config import CaptureSpec, ModelSpec
from musicinterp.frames import SAMPLE_RATE_HZ
from musicinterp.models import load_model
from musicinterp.store import ClipLayout, StoreLayout, init_store, mark_complete, store_attrs, write_clip


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="musicgen-small", choices=["tiny", "musicgen-small"])
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    loaded = load_model(ModelSpec(source="offline", name=args.model))
    print(
        f"model offline/{args.model} (weights: random) built in {time.perf_counter() - t0:.1f} s; "
        f"{loaded.n_layers} layers x {loaded.hidden_size}; torch threads: {torch.get_num_threads()}"
    )
    spec = CaptureSpec()
    print("seconds  encode_s  forward_s  capture_s  write_s  capture/forward  real-time factor")
    for seconds in args.seconds:
        audio = (np.random.default_rng(0).standard_normal(int(seconds * SAMPLE_RATE_HZ)) * 0.1).astype(np.float32)
        encode_s = _best(lambda: encode_audio(loaded, audio), args.repeats)
        codes = encode_audio(loaded, audio)
        states, mask = text_condition(loaded, spec)
        ids = delayed_decoder_input(loaded, codes)

        def forward():
            with torch.no_grad():
                loaded.model(encoder_outputs=(states,), attention_mask=mask, decoder_input_ids=ids, use_cache=False)

        forward_s = _best(forward, args.repeats)
        capture_s = _best(lambda: capture_codes(loaded, codes, spec), args.repeats)
        cap = capture_codes(loaded, codes, spec)
        with tempfile.TemporaryDirectory() as tmp:
            url = f"{tmp}/bench.zarr"
            layout = StoreLayout(
                (ClipLayout("c", codes.shape[1]),), cap.layers, loaded.hidden_size, loaded.num_codebooks
            )
            attrs = store_attrs(
                model=loaded.describe(),
                run_spec_json="{}",
                fingerprint="bench",
                capture=spec.model_dump(),
                package_version="bench",
            )
            init_store(url, layout, {}, attrs)

            def write():
                write_clip(url, "c", cap.resid, cap.codes)
                mark_complete(url, "c")

            write_s = _best(write, args.repeats)
        print(
            f"{seconds:7.1f}  {encode_s:8.2f}  {forward_s:9.2f}  {capture_s:9.2f}  {write_s:7.2f}  "
            f"{capture_s / forward_s:15.2f}  {(encode_s + capture_s + write_s) / seconds:16.3f}"
        )


if __name__ == "__main__":
    main()
