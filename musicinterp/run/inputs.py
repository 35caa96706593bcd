"""What a run's inputs are, and how they changed since it was planned.

A run's identity is its config (the fingerprint names the run folder) *and* what its inputs were
when it was planned: the manifest's clips with the sha256 of their samples. An audio folder can gain,
lose or change files after that; ``compare_inputs`` says which, so planning flags them instead of
silently leaving new files out, and ``musicinterp replan`` (``musicinterp.run.replan``) brings the run
up to date without recapturing the clips that did not change.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from musicinterp.config import SliceSpec
from musicinterp.slice import ClipRecord, Manifest
from musicinterp.sources.base import ClipError


def inputs_digest(manifest: Manifest) -> str:
    """A digest of the run's inputs: every clip id with the sha256 of its samples, in manifest order."""
    h = hashlib.sha256()
    for c in manifest.clips:
        h.update(f"{c.clip_id}\0{c.sha256}\n".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class InputChanges:
    """Clips of a fresh plan compared with the run's manifest, by clip id."""

    new: list[str] = field(default_factory=list)  # planned now, not in the run
    changed: list[str] = field(default_factory=list)  # in both, other samples (sha256)
    gone: list[str] = field(default_factory=list)  # in the run, no longer planned (file removed or now bad)

    def __bool__(self) -> bool:
        return bool(self.new or self.changed or self.gone)

    def as_rejected(self, root: str) -> list[dict[str, str]]:
        """The changes as the run's "left out" entries, each saying what to do."""
        fix = f"`musicinterp replan {root}`"
        return (
            [
                {"item": c, "problem": f"new since the run was planned, not in its store; {fix} adds it"}
                for c in self.new
            ]
            + [
                {"item": c, "problem": f"audio changed since the run was planned; {fix} captures it again"}
                for c in self.changed
            ]
            + [{"item": c, "problem": f"input gone since the run was planned; {fix} drops it"} for c in self.gone]
        )


def _absolute(path: str) -> str:
    """Absolute with ``..`` collapsed, symbolic links kept (a folder of links to files elsewhere is fine)."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def data_roots(spec: SliceSpec) -> list[str]:
    """The folders (or single files) a run's audio-folder sources may read."""
    return [_absolute(s.path) for s in spec.sources if s.kind == "audio_dir"]


def check_locator(clip: ClipRecord, roots: list[str]) -> None:
    """Refuse a clip whose file lies outside the run's data roots: a manifest sits on a shared volume and
    could be edited to make a worker read any file it can (the roots come from the planned config)."""
    if clip.source != "audio_dir":
        return
    path = _absolute(json.loads(clip.locator)["path"])
    if not any(os.path.commonpath([path, r]) == r for r in roots):
        raise ClipError(clip.clip_id, f"reads {path!r}, outside the run's data roots {roots}; was the manifest edited?")


def compare_inputs(old: Manifest, new: Manifest) -> InputChanges:
    before = {c.clip_id: c.sha256 for c in old.clips}
    now = {c.clip_id: c.sha256 for c in new.clips}
    return InputChanges(
        new=[c for c in now if c not in before],
        changed=[c for c in now if c in before and before[c] != now[c]],
        gone=[c for c in before if c not in now],
    )
