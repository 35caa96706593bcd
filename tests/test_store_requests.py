"""Requests a run makes to its store, counted on a real fsspec filesystem: opening the store reads its metadata
once (the consolidated document written at creation), and each clip then costs its own chunks and nothing more.

On an object store every metadata read is a request (S3: a GET of a ``zarr.json``); a writer that reopened the
store per clip made about 290 of them per captured clip (issue 17). ``counting://`` is a local disk seen through
fsspec (the seam every store URL goes through) that counts the filesystem calls zarr makes, by kind.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr
from fsspec.implementations.local import LocalFileSystem

from musicinterp import run
from musicinterp.config import RunSpec
from musicinterp.run.annotate import annotate_one
from musicinterp.run.plan import run_clips
from musicinterp.store import (
    ClipLayout,
    ClipWriter,
    StoreLayout,
    init_store,
    mark_complete,
    store_attrs,
    write_clip,
    write_labels,
)

CALLS = ("cat_file", "pipe_file", "open", "info", "exists", "ls", "find", "rm", "rm_file", "cat_ranges")
LABELS = {"lab_f": {"dtype": "float32", "units": "s"}, "lab_i": {"dtype": "int8"}, "lab_b": {"dtype": "bool"}}


class _Requests:
    """The calls made through ``counting://`` since the last ``take()``, as (call, kind): kind ``meta`` for a
    store's ``zarr.json``, ``chunk`` for anything else in a store, ``other`` outside stores. Only the outermost
    call counts (a local ``cat_file`` opens the file: one request)."""

    counts: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    depth = threading.local()

    @classmethod
    def register(cls) -> None:
        class Counting(LocalFileSystem):
            protocol = "counting"

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **{**kwargs, "auto_mkdir": True})

            @classmethod
            def _strip_protocol(cls_, path):
                return LocalFileSystem._strip_protocol(str(path).removeprefix("counting://"))

        def counted(name: str):
            method = getattr(LocalFileSystem, name)

            def call(self, path, *args, **kwargs):
                depth = getattr(cls.depth, "n", 0)
                if depth == 0:
                    first = str(path[0] if isinstance(path, list) and path else path)
                    kind = "other" if ".zarr" not in first else "meta" if first.endswith("zarr.json") else "chunk"
                    with cls.lock:
                        cls.counts[(name, kind)] += 1
                cls.depth.n = depth + 1
                try:
                    return method(self, path, *args, **kwargs)
                finally:
                    cls.depth.n = depth

            return call

        for name in CALLS:
            setattr(Counting, name, counted(name))
        fsspec.register_implementation("counting", Counting, clobber=True)

    @classmethod
    def take(cls) -> Counter[tuple[str, str]]:
        with cls.lock:
            taken = Counter(cls.counts)
            cls.counts.clear()
        return taken


def _kind(counts: Counter[tuple[str, str]], kind: str) -> int:
    return sum(n for (_, k), n in counts.items() if k == kind)


@pytest.fixture
def requests():
    _Requests.register()
    _Requests.take()
    yield _Requests


def _attrs():
    return store_attrs(
        model={"model_id": "offline/tiny", "revision": "seed-0", "weights": "random"},
        run_spec_json="{}",
        fingerprint="fp1",
        capture={"half": "conditional", "guidance_scale": 3.0, "description": ""},
        package_version="test",
    )


def _store(tmp_path: Path, n_clips: int) -> tuple[str, StoreLayout]:
    layout = StoreLayout(
        clips=tuple(ClipLayout(f"c{i}", 40 + i) for i in range(n_clips)), layers=(0, 1), hidden_size=16, num_codebooks=4
    )
    url = f"counting://{tmp_path}/s.zarr"
    assert init_store(url, layout, {"sha256": [f"h{i}" for i in range(n_clips)]}, _attrs(), labels=LABELS)
    return url, layout


def _clip(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    labels = {
        "lab_f": rng.standard_normal(n).astype(np.float32),
        "lab_i": rng.integers(0, 2, n).astype(np.int8),
        "lab_b": rng.random(n) < 0.5,
    }
    return rng.standard_normal((2, n, 16)).astype(np.float16), rng.integers(0, 2048, (4, n)).astype(np.int16), labels


def test_requests__a_kept_writer_reads_the_metadata_once_and_each_clip_costs_its_chunks(tmp_path, requests):
    url, layout = _store(tmp_path, n_clips=6)
    requests.take()
    writer = ClipWriter(url)
    opened = requests.take()
    assert _kind(opened, "meta") == 1, opened  # the root document, every array's metadata in it
    assert _kind(opened, "chunk") == 2, opened  # the clip ids and frame counts
    clips = {c.clip_id: _clip(c.n_frames, i) for i, c in enumerate(layout.clips)}
    resid_chunks = len(layout.layers) // layout.layers_per_chunk
    for clip_id, (resid, codes, labels) in clips.items():
        write_clip(writer, clip_id, resid, codes)
        mark_complete(writer, clip_id)
        write_labels(writer, clip_id, labels)
        mark_complete(writer, clip_id, flag="annotated")
        per_clip = requests.take()
        # writes only, one per chunk of the clip: resid, codes, its flag, each label (all False: deleted), its flag
        assert _kind(per_clip, "meta") == 0, (clip_id, per_clip)
        writes = per_clip[("pipe_file", "chunk")] + per_clip[("rm", "chunk")]
        assert writes == sum(per_clip.values()) == resid_chunks + 1 + 1 + len(LABELS) + 1, (clip_id, per_clip)
    ds = xr.open_zarr(url, consolidated=False)  # what plain xarray reads back: every value as written
    for i, (resid, codes, labels) in enumerate(clips.values()):
        n = resid.shape[1]
        np.testing.assert_array_equal(ds["resid"].isel(clip=i, time=slice(0, n)).values, resid)
        assert np.isnan(ds["resid"].isel(clip=i, time=slice(n, None)).values).all()
        np.testing.assert_array_equal(ds["codes"].isel(clip=i, time=slice(0, n)).values, codes)
        for name, values in labels.items():
            np.testing.assert_array_equal(ds[name].isel(clip=i, time=slice(0, n)).values, values, err_msg=name)
            assert ds[name].dtype == values.dtype, name
    assert ds["complete"].values.all() and ds["annotated"].values.all()
    # a variable added after the consolidated document, beside it (its own metadata only), is found all the same
    zarr.create_array(
        f"{url}/gen_complete", shape=(6,), chunks=(1,), dtype=bool, fill_value=False, dimension_names=["clip"]
    )
    mark_complete(ClipWriter(url), "c4", flag="gen_complete")
    assert list(xr.open_zarr(url, consolidated=False)["gen_complete"].values) == [False] * 4 + [True, False]


def test_requests__a_store_without_consolidated_metadata_is_written_reading_each_array_once(tmp_path, requests):
    """Stores made before the consolidated document (or whose root a plain writer rewrote without it): the
    writer reads each array's own metadata the first time it is used, then never again."""
    url, layout = _store(tmp_path, n_clips=3)
    root = tmp_path / "s.zarr" / "zarr.json"
    doc = json.loads(root.read_text())
    assert "consolidated_metadata" in doc and doc["attributes"]["store_ready"] is True
    root.write_text(json.dumps({k: v for k, v in doc.items() if k != "consolidated_metadata"}))
    requests.take()
    writer = ClipWriter(url)
    for i, c in enumerate(layout.clips):
        resid, codes, labels = _clip(c.n_frames, i)
        write_clip(writer, c.clip_id, resid, codes)
        mark_complete(writer, c.clip_id)
        write_labels(writer, c.clip_id, labels)
        if i == 0:
            first = requests.take()
    later = requests.take()
    assert _kind(first, "meta") >= 1 + 3 + len(LABELS), first  # the root, then each array it used
    assert _kind(later, "meta") == 0, later
    ds = xr.open_zarr(url, consolidated=False)
    assert list(ds["complete"].values) == [True] * 3
    np.testing.assert_array_equal(ds["resid"].isel(clip=2, time=slice(0, 42)).values, resid)


def _counted_run(tmp_path: Path, requests, n_clips: int) -> tuple[Counter, Counter]:
    spec = RunSpec(
        name=f"req{n_clips}",
        slice={
            "name": "req",
            "sources": [{"kind": "synthetic", "n_pieces": n_clips, "duration_s": 2.0, "seed": 1}],
            "n_shards": 1,
        },
    )
    prepared = run.prepare_run(spec, str(tmp_path / f"out{n_clips}"))
    paths = run.RunPaths("counting://" + prepared.root)
    requests.take()
    result = run.capture_shard(spec.model, spec.capture, paths, 0, overlap_writes=False)
    assert len(result.captured) == n_clips and not result.failed, result
    capture = requests.take()
    annotated = [annotate_one(spec.annotation, paths, clip, index) for index, clip in run_clips(paths)]
    assert all(a.annotated or a.reason for a in annotated)
    return capture, requests.take()


def test_requests__a_shard_reads_the_store_metadata_once_however_many_clips(tmp_path, requests):
    """Capture: the metadata reads of a shard do not grow with its clips, and each more clip costs a few
    requests (its chunks and flags). Annotation: one metadata read per clip (its task opens the store)."""
    small_capture, small_annotate = _counted_run(tmp_path, requests, n_clips=2)
    big_capture, big_annotate = _counted_run(tmp_path, requests, n_clips=5)
    assert _kind(big_capture, "meta") == _kind(small_capture, "meta"), (small_capture, big_capture)
    per_clip = (sum(big_capture.values()) - sum(small_capture.values())) / 3
    assert per_clip <= 8, (small_capture, big_capture)  # was about 290 (issue 17)
    assert _kind(small_annotate, "meta") == 2 and _kind(big_annotate, "meta") == 5, (small_annotate, big_annotate)
    labels_per_clip = (sum(big_annotate.values()) - sum(small_annotate.values())) / 3
    assert labels_per_clip <= 60, big_annotate  # one chunk per label variable and clip, and a few reads
