"""Prefect flows: the experiment's stages and their fan-out. See flows/README.md."""
