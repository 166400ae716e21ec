"""One API server per catalogue module, on that module's database and a fresh local store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import resources
from velocity.settings import get_settings

from ..api_support import Api, running_api


def _clear_settings_caches() -> None:
    """Forget settings and everything built from them (tasks.resources' cached objects)."""
    get_settings.cache_clear()
    for value in vars(resources).values():
        if callable(getattr(value, "cache_clear", None)) and value is not get_settings:
            value.cache_clear()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security-home")


@pytest.fixture(scope="module")
def api(database_url: str, home: Path) -> Iterator[Api]:
    """The service app on loopback, reading the VELOCITY_* environment as in production."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VELOCITY_DATABASE_URL", database_url)
        patch.setenv("VELOCITY_HOME", str(home))
        patch.setenv("VELOCITY_STORAGE", f"local://{home / 'storage'}")
        _clear_settings_caches()
        try:
            with running_api(patch) as running:
                yield running
        finally:
            _clear_settings_caches()


@pytest.fixture(scope="module")
def storage(home: Path) -> Path:
    """The local object store's directory: a refused input must leave it as it was."""
    return home / "storage"
