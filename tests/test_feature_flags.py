"""Feature flags: seeded disabled; bucketing stable and monotone; targets and environment."""

from __future__ import annotations

import uuid

import pytest

from velocity.db import Actor
from velocity.files import FileClient

SEEDED = ["FSYNC_USE_RPC", "FSYNC_SERVER_BROADCASTS", "FSYNC_SNAPSHOT_HYDRATION",
          "FSYNC_BULK_GENERATION", "FSYNC_KEEP_CLIENT_BROADCAST"]
USERS = [uuid.UUID(int=n * 7919 + 1) for n in range(2000)]


@pytest.fixture
def flags(db):
    return FileClient(db, Actor.service())


def set_flag(db, key: str, **values) -> None:
    assignments = ", ".join(f"{column} = %({column})s" for column in values)
    with db.transaction() as conn:
        conn.execute(f"UPDATE feature_flags SET {assignments} WHERE flag_key = %(key)s",
                     {**values, "key": key})


def enabled_users(db, key: str) -> set[uuid.UUID]:
    with db.transaction() as conn:
        rows = conn.execute("SELECT u FROM unnest(%s::uuid[]) AS u WHERE is_feature_enabled(%s, u)",
                            (USERS, key)).fetchall()
    return {row[0] for row in rows}


def test_the_seeds_flags_exist_disabled(db, flags):
    with db.transaction() as conn:
        seeded = conn.execute(
            "SELECT flag_key, is_enabled, rollout_percentage FROM feature_flags"
            " WHERE flag_key = ANY (%s) ORDER BY flag_key", (SEEDED,)).fetchall()
    assert seeded == [(key, False, 0) for key in sorted(SEEDED)]
    for key in SEEDED:
        assert flags.is_feature_enabled(key, USERS[0]) is False
    assert flags.is_feature_enabled("NO_SUCH_FLAG", USERS[0]) is False


def test_bucketing_is_stable_and_raising_the_percentage_only_adds_users(db):
    key = "FSYNC_USE_RPC"
    previous: set[uuid.UUID] = set()
    for percentage in [0, 1, 5, 25, 50, 100]:
        set_flag(db, key, is_enabled=True, rollout_percentage=percentage)
        now = enabled_users(db, key)
        assert now == enabled_users(db, key)  # stable
        assert previous <= now  # monotone
        share = len(now) / len(USERS)
        assert abs(share - percentage / 100) < 0.04, (percentage, share)
        previous = now
    assert len(previous) == len(USERS)
    set_flag(db, key, is_enabled=False, rollout_percentage=0)


def test_targets_master_switch_and_environment(db, flags):
    key = "FSYNC_BULK_GENERATION"
    target = USERS[3]
    set_flag(db, key, is_enabled=True, rollout_percentage=0, target_user_ids=[target])
    assert flags.is_feature_enabled(key, target) is True
    assert flags.is_feature_enabled(key, USERS[4]) is False
    assert flags.is_feature_enabled(key) is False
    set_flag(db, key, rollout_percentage=100)
    assert flags.is_feature_enabled(key) is True
    set_flag(db, key, environment="staging")
    assert flags.is_feature_enabled(key, target) is False
    set_flag(db, key, is_enabled=False, environment="production", target_user_ids=[])
    assert flags.is_feature_enabled(key, target) is False
