"""The Bach chorales of music21's own corpus, in one fixed order (the validation scans them in it).

The order is a natural sort of the file names in music21's ``corpus/bach`` folder (``bwv1.6``,
``bwv2.6``, ..., ``bwv438``), so "chorales 21-40 of the scan" means the same scores on every machine
with the same music21 version. Only four-part chorale files are listed: MusicXML (``.mxl``/``.xml``)
files named ``bwv<number>...`` with a BWV number up to 438 (this leaves out the WTC prelude BWV 846,
the Humdrum duplicates and the roman-numeral analyses).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

CHORALE_MAX_BWV = 438  # the four-part chorales are BWV 250-438 plus cantata / passion movements
_NAME = re.compile(r"^bwv(\d+)[^/]*\.(mxl|xml)$")


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


@lru_cache(maxsize=1)
def bach_chorale_paths() -> tuple[str, ...]:
    """music21 corpus paths (``'bach/bwv1.6.mxl'``) of the Bach chorales, naturally sorted."""
    from music21 import corpus

    names = set()
    for p in corpus.getComposer("bach"):
        path = Path(str(p))
        m = _NAME.match(path.name)
        if m and path.parent.name == "bach" and int(m.group(1)) <= CHORALE_MAX_BWV:
            names.add(path.name)
    return tuple(f"bach/{name}" for name in sorted(names, key=_natural_key))
