"""Tests run the same whatever the caller's environment: no book-level worker count or forced retraining."""
import pytest


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    monkeypatch.delenv("ELR_WORKERS", raising=False)
    monkeypatch.delenv("ELR_FRESH", raising=False)
