"""A private Docker engine with the agent image, for the tests that need real containers.

One dockerd per test session on its own socket, data and exec roots (never the machine's own
engine), stopped by its pid at the end. The image is built once per session; the debootstrap
rootfs under it is cached in ~/.cache/velocity (VELOCITY_TEST_IMAGE_CACHE overrides), so a
developer's re-runs only import it, while CI on a fresh machine bootstraps it once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from velocity.runtimes.agent_image import base_key, build_agent_image, default_cache_dir
from velocity.runtimes.dockerd import PrivateDockerEngine

from .helpers import require_tool


@dataclass
class DockerEngine:
    url: str
    image: str
    client: docker.DockerClient


def require_root(why: str) -> None:
    """Skip without root, or fail under VELOCITY_TEST_STRICT=1 (CI runs as root)."""
    if os.geteuid() == 0:
        return
    message = f"needs root ({why})"
    if os.environ.get("VELOCITY_TEST_STRICT") == "1":
        pytest.fail(message)
    pytest.skip(message)


def image_cache_dir() -> Path:
    override = os.environ.get("VELOCITY_TEST_IMAGE_CACHE")
    return Path(override) if override else default_cache_dir()


def running_docker_engine() -> Iterator[DockerEngine]:
    """The body of the session fixture: start dockerd, build the image, yield, stop."""
    require_tool("dockerd", "the docker runtime's tests run a private Docker engine")
    require_root("a private dockerd, and debootstrap for the agent image's base")
    cache = image_cache_dir()
    if not rootfs_tarball_cached(cache):
        require_tool("debootstrap", "the agent image's Debian base is bootstrapped locally")
    engine = PrivateDockerEngine().start()
    client = engine.client()
    try:
        built = build_agent_image(client, cache)
        yield DockerEngine(engine.url, built.tag, client)
    finally:
        for container in client.api.containers(all=True):
            client.api.remove_container(container["Id"], force=True, v=True)
        client.close()
        engine.stop()


def rootfs_tarball_cached(cache: Path) -> bool:
    return (cache / f"rootfs-{base_key()}.tar").exists()
