"""Shared fixtures: the tiny offline model is built once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def tiny_model():
    from musicinterp.config import ModelSpec
    from musicinterp.models import load_model

    return load_model(ModelSpec(source="offline", name="tiny", seed=0))
