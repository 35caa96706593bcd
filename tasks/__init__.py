"""Prefect tasks: thin wrappers over musicinterp with retries and cache policies.

Imports run one way: ``flows -> tasks -> musicinterp``. A task takes ids, paths, fingerprints and the
settings its stage needs, and returns something small (a dict or a small record), never a model or a
tensor. ``run.py``: the run pipeline (plan, capture, progress, summary); ``annotate.py``: one clip's
labels; ``analysis.py``: the probe analysis; ``toy.py``: training the positive-control model.
"""
