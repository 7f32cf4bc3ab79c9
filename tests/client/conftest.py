"""Fixtures for the client SDK tests: no real sleeping, a clean environment, canned bodies."""

from __future__ import annotations

import pytest
from ziggurat import _retry


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "venv: builds a fresh virtualenv with only the client installed (slow)"
    )


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own ZIGGURAT_* variables must not leak into the tests."""
    monkeypatch.delenv("ZIGGURAT_BASE_URL", raising=False)
    monkeypatch.delenv("ZIGGURAT_API_KEY", raising=False)


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retries never really wait in tests; the waits they asked for are recorded here."""
    requested: list[float] = []

    def fake_sleep(seconds: float) -> None:
        requested.append(seconds)

    async def fake_async_sleep(seconds: float) -> None:
        requested.append(seconds)

    monkeypatch.setattr(_retry, "sleep", fake_sleep)
    monkeypatch.setattr(_retry, "async_sleep", fake_async_sleep)
    return requested


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
