"""The agent image, built locally with no registry: a Debian rootfs, then this checkout's agent.

Two layers, each cached by a hash of what goes into it:

- the base, `velocity-agent-base:<key>`: `debootstrap --variant=minbase` of Debian bookworm
  with python3, trimmed, with the non-root user `velocity` (10001:10001) and a `/workspace`
  it owns; the rootfs tarball is kept under the cache directory, so a new engine imports it
  instead of bootstrapping again;
- the agent, `velocity-agent:<content hash>`: the agent package, its dependencies (httpx,
  websockets and theirs, copied from this environment, byte-compiled) and the entrypoint,
  put into a never-started container of the base and committed with the agent's user,
  workdir and entrypoint. No Dockerfile, so no builder adds a PATH or anything else to the
  image's environment: a container's environment is exactly what its runtime passes.

The tag is a function of the files alone: `agent_image_tag()` names the image this checkout
needs without building it, and a build with an unchanged tag is a no-op.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import os
import platform
import py_compile
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from velocity.runtimes.base import RuntimeFailure

IMAGE_REPOSITORY = "velocity-agent"
BASE_REPOSITORY = "velocity-agent-base"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3",)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
IMAGE_PYTHON = "3.11"  # bookworm's python3: dependency markers are evaluated for it
AGENT_UID = 10001
AGENT_GID = 10001
AGENT_DEPENDENCIES = ("httpx", "websockets")
SITE_PACKAGES = "/usr/lib/python3/dist-packages"
CONTEXT_DIR = Path(__file__).with_name("image_context")
ENTRYPOINT = ["/usr/bin/python3", "-I", "/opt/velocity/entry.py"]
IMAGE_CONFIG: dict[str, object] = {
    "entrypoint": ENTRYPOINT,
    "user": f"{AGENT_UID}:{AGENT_GID}",
    "working_dir": "/workspace",
    "labels": {"velocity.image": "agent"},
}
ROOTFS_LAYOUT = "2"  # bump when prepare_rootfs changes what it adds or trims
TRIMMED = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
           "var/cache/apt", "var/lib/apt/lists", "var/log")


class ImageBuildFailed(RuntimeFailure):
    """The agent image could not be built; the message says which step failed and why."""

    code = "image_build_failed"
    http_status = 500


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    base_tag: str
    built: bool  # False: the engine had this tag already
    seconds: float


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/velocity, else ~/.cache/velocity: where rootfs tarballs are kept."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "velocity"


def base_key() -> str:
    """What the base layer is made of, hashed: suite, packages, architecture, layout."""
    facts = "\n".join([DEBIAN_SUITE, "minbase", ",".join(DEBIAN_PACKAGES), _debian_arch(),
                       f"{AGENT_UID}:{AGENT_GID}", ROOTFS_LAYOUT])
    return hashlib.sha256(facts.encode()).hexdigest()[:16]


def base_tag() -> str:
    return f"{BASE_REPOSITORY}:{base_key()}"


def context_files() -> dict[str, bytes]:
    """The agent layer's files by path in the image: entrypoint, agent, dependencies."""
    files = {ENTRYPOINT[-1].lstrip("/"): (CONTEXT_DIR / "entry.py").read_bytes()}
    site = SITE_PACKAGES.lstrip("/")
    agent_dir = _agent_dir()
    for path in sorted(agent_dir.rglob("*.py")):
        files[f"{site}/agent/{path.relative_to(agent_dir).as_posix()}"] = path.read_bytes()
    for name in dependency_closure(AGENT_DEPENDENCIES):
        files.update(_distribution_files(name))
    return files


def agent_image_tag(files: dict[str, bytes] | None = None) -> str:
    """The tag of the agent image this checkout builds: a hash of every file in it."""
    files = context_files() if files is None else files
    digest = hashlib.sha256(f"{base_tag()}\n{IMAGE_CONFIG}\n".encode())
    for path in sorted(files):
        digest.update(f"{path}\0{hashlib.sha256(files[path]).hexdigest()}\n".encode())
    return f"{IMAGE_REPOSITORY}:{digest.hexdigest()[:16]}"


def build_agent_image(client: docker.DockerClient, cache_dir: Path,
                      mirror: str = DEFAULT_MIRROR,
                      log: Callable[[str], None] = lambda line: None) -> BuiltImage:
    """Make sure the engine has this checkout's agent image; build what it lacks."""
    started = time.monotonic()
    files = context_files()
    tag = agent_image_tag(files)
    base = base_tag()
    if _has_image(client, tag):
        log(f"{tag} is up to date")
        return BuiltImage(tag, base, False, time.monotonic() - started)
    if not _has_image(client, base):
        tarball = rootfs_tarball(cache_dir, mirror, log)
        log(f"importing {tarball.name} as {base}")
        repository, _, version = base.partition(":")
        try:
            client.api.import_image_from_file(str(tarball), repository=repository, tag=version)
        except docker.errors.APIError as error:
            raise ImageBuildFailed(f"cannot import the base rootfs {tarball}: {error}") from error
    log(f"building {tag} on {base}")
    layer = _layer_tar(_with_bytecode(files))
    repository, _, version = tag.partition(":")
    try:
        container = client.api.create_container(base, **IMAGE_CONFIG)
        try:
            client.api.put_archive(container["Id"], "/", layer)
            client.api.commit(container["Id"], repository=repository, tag=version)
        finally:
            client.api.remove_container(container["Id"], force=True)
    except docker.errors.APIError as error:
        raise ImageBuildFailed(f"building {tag} on {base} failed: {error}") from error
    return BuiltImage(tag, base, True, time.monotonic() - started)


def rootfs_tarball(cache_dir: Path, mirror: str = DEFAULT_MIRROR,
                   log: Callable[[str], None] = lambda line: None) -> Path:
    """The base rootfs as a tar under `cache_dir`, bootstrapped once per base key."""
    tarball = cache_dir / f"rootfs-{base_key()}.tar"
    if tarball.exists():
        return tarball
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageBuildFailed("building the base image needs debootstrap on PATH "
                               "(apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise ImageBuildFailed("building the base image runs debootstrap, which needs root; "
                               f"or copy a rootfs tarball to {tarball}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=cache_dir) as work:
        root = Path(work) / "root"
        log(f"debootstrap {DEBIAN_SUITE} from {mirror} (a few minutes, once)")
        _run([debootstrap, "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
              DEBIAN_SUITE, str(root), mirror], "debootstrap")
        prepare_rootfs(root)
        partial = Path(work) / "rootfs.tar"
        _run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."],
             "tar of the rootfs")
        os.replace(partial, tarball)
    return tarball


def prepare_rootfs(root: Path) -> None:
    """Trim what a container never reads and add the agent's user and workspace."""
    for relative in TRIMMED:
        target = root / relative
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    with open(root / "etc/passwd", "a") as passwd:
        passwd.write(f"velocity:x:{AGENT_UID}:{AGENT_GID}:velocity agent:/tmp:/usr/sbin/nologin\n")
    with open(root / "etc/group", "a") as group:
        group.write(f"velocity:x:{AGENT_GID}:\n")
    workspace = root / "workspace"
    workspace.mkdir(mode=0o755)
    os.chown(workspace, AGENT_UID, AGENT_GID)


def dependency_closure(names: Iterable[str]) -> list[str]:
    """The distributions `names` need to run in the image, themselves included, sorted."""
    environment = {"python_version": IMAGE_PYTHON, "python_full_version": f"{IMAGE_PYTHON}.0",
                   "platform_python_implementation": "CPython", "sys_platform": "linux",
                   "extra": ""}
    seen: set[str] = set()
    pending = [canonicalize_name(name) for name in names]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            raise ImageBuildFailed(f"the agent needs {name}, which is not installed here "
                                   "(pip install -e .)", distribution=name) from None
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pending.append(canonicalize_name(requirement.name))
    return sorted(seen)


def _distribution_files(name: str) -> dict[str, bytes]:
    distribution = importlib.metadata.distribution(name)
    found: dict[str, bytes] = {}
    for entry in distribution.files or []:
        parts = entry.parts
        if parts[0] == ".." or "__pycache__" in parts or entry.suffix == ".pyc":
            continue  # console scripts live outside site-packages; bytecode is made anew
        path = Path(str(distribution.locate_file(entry)))
        if path.is_file():
            found[f"{SITE_PACKAGES.lstrip('/')}/{entry.as_posix()}"] = path.read_bytes()
    if not found:
        raise ImageBuildFailed(f"distribution {name} lists no files to copy", distribution=name)
    return found


def _with_bytecode(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files plus unchecked-hash .pyc for site-packages (the image's root is read-only,
    so without them every start would compile the agent and its dependencies again)."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" != IMAGE_PYTHON:
        return files  # bytecode of another Python would be ignored in the image
    compiled = dict(files)
    with tempfile.TemporaryDirectory() as work:
        for path, data in files.items():
            if not (path.startswith(SITE_PACKAGES.lstrip("/")) and path.endswith(".py")):
                continue
            source = Path(work) / path
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(data)
            target = Path(work) / "out.pyc"
            try:
                py_compile.compile(str(source), cfile=str(target), doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            except py_compile.PyCompileError:
                continue  # e.g. a file only for another Python version: it compiles on use
            pyc = Path(path).parent / "__pycache__" / \
                f"{Path(path).stem}.{sys.implementation.cache_tag}.pyc"
            compiled[pyc.as_posix()] = target.read_bytes()
    return compiled


def _layer_tar(files: dict[str, bytes]) -> bytes:
    """The files as a tar rooted at /, with every directory (root-owned, 0755) listed."""
    directories = sorted({parent.as_posix() for path in files
                          for parent in Path(path).parents if parent != Path(".")})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in directories:
            entry = tarfile.TarInfo(directory)
            entry.type = tarfile.DIRTYPE
            entry.mode = 0o755
            tar.addfile(entry)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size = len(files[path])
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(files[path]))
    return buffer.getvalue()


def _has_image(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ImageBuildFailed(f"{what} failed (exit {result.returncode}): "
                               + " | ".join(tail), command=command[0])


def _agent_dir() -> Path:
    """Where the agent package is, found without importing it (velocity never does)."""
    spec = importlib.util.find_spec("agent")
    if spec is None or spec.origin is None:
        raise ImageBuildFailed("the agent package is not importable here (pip install -e .)")
    return Path(spec.origin).parent


def _debian_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
