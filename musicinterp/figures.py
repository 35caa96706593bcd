"""Figures for reports that travel as text: a PNG (a path or an fsspec URL) as a data URI, so a Prefect markdown
artifact shows it wherever the run's files live."""

from __future__ import annotations

import base64

import fsspec


def png_data_uri(url: str) -> str:
    with fsspec.open(url, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()
