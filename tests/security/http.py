"""Calls of the HTTP API as an attacker makes them: raw bodies, chosen headers."""

from __future__ import annotations

import json
from typing import Any

import httpx

from ..api_support import Api


def rpc(api: Api, function: str, args: Any, headers: dict[str, str]) -> httpx.Response:
    """`POST /rest/v1/rpc/{function}` with `args` as JSON (or as raw bytes when bytes)."""
    body = args if isinstance(args, bytes) else json.dumps(args).encode()
    return api.client.post(f"/rest/v1/rpc/{function}", content=body,
                           headers={**headers, "Content-Type": "application/json"})


def post(api: Api, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return api.client.post(path, content=body,
                           headers={"Content-Type": "application/json", **headers})


def deep_json(depth: int) -> bytes:
    """`[[[…]]]` nested `depth` times: past Python's recursion limit at depth ~1,000."""
    return b"[" * depth + b"]" * depth
