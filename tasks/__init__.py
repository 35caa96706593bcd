"""Prefect tasks: thin wrappers over musicinterp with retries and cache policies.

Imports run one way: ``flows -> tasks -> musicinterp``. A task takes ids, paths and fingerprints and
returns something small (a dict), never a model or a tensor.
"""
