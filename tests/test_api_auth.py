"""The API's credentials: generated secrets added to an existing home without changing the
old ones, and the service key accepted only exactly."""

from __future__ import annotations

import json
import stat

import pytest

from velocity.settings import GENERATED_SECRET_NAMES, Settings

from .api_support import running_api


def test_new_secrets_join_an_existing_home_without_changing_the_old(tmp_path):
    old = {"jwt_secret": "j" * 43, "token_key": "t" * 43, "storage_signing_secret": "s" * 43}
    (tmp_path / "secrets.json").write_text(json.dumps(old))
    settings = Settings(home=tmp_path)
    assert settings.user_jwt_secret() == old["jwt_secret"]
    key, webhook = settings.api_service_key(), settings.webhook_signing_secret()
    assert len(key) >= 40 and len(webhook) >= 40 and key != webhook
    stored = json.loads((tmp_path / "secrets.json").read_text())
    assert {name: stored[name] for name in old} == old
    assert set(stored) == set(GENERATED_SECRET_NAMES)
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600
    again = Settings(home=tmp_path)  # another process, later: the same values
    assert (again.api_service_key(), again.webhook_signing_secret()) == (key, webhook)


def test_configured_keys_win_over_generated_ones(tmp_path):
    settings = Settings(home=tmp_path, service_key="configured-key",
                        webhook_secret="configured-secret")
    assert settings.api_service_key() == "configured-key"
    assert settings.webhook_signing_secret() == "configured-secret"


@pytest.fixture
def api(configured, monkeypatch):
    with running_api(monkeypatch) as running:
        yield running


def test_only_the_exact_service_key_acts_as_the_service(api):
    key = api.settings.api_service_key()
    unknown = "00000000-0000-0000-0000-000000000000"
    path = f"/sessions/{unknown}/status"
    assert api.client.get(path, headers={"apikey": key}).status_code == 404
    assert api.client.get(path, headers={"Authorization": f"Bearer {key}"}).status_code == 404
    for wrong in (key[:-1], key + "x", key.upper(), ""):
        refused = api.client.get(path, headers={"apikey": wrong})
        assert refused.status_code == 401, wrong
    not_a_token = api.client.get(path, headers={"Authorization": f"Bearer {key}x"})
    assert not_a_token.status_code == 401 and not_a_token.json()["reason"] == "malformed"
