"""Prefect flows: parameters in, orchestration, artifacts out."""
