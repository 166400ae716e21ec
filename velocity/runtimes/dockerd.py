"""A private Docker engine: dockerd on its own socket, data root and exec root, for tests and
benchmarks on a machine whose own engine (if any) must not be touched.

It runs without a bridge or iptables rules (session containers use host networking), starts
its own containerd under the same roots, and is stopped by its pid, after which its directory
is deleted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

from velocity.runtimes.base import RuntimeFailure


class PrivateDockerEngine:
    """`start()` it, use `url`, `stop()` it. Needs root and dockerd on PATH."""

    def __init__(self, root: Path | None = None) -> None:
        # A short path: the socket's must fit in a sockaddr_un (108 bytes).
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="vdk-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.log_path = self.root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, version="auto", timeout=120)

    def start(self, timeout: float = 60.0) -> PrivateDockerEngine:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise RuntimeFailure("dockerd is not installed (apt-get install docker.io)")
        if os.geteuid() != 0:
            raise RuntimeFailure("a private dockerd needs root")
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [dockerd, "--host", self.url, "--data-root", str(self.root / "data"),
                 "--exec-root", str(self.root / "exec"), "--pidfile",
                 str(self.root / "dockerd.pid"), "--bridge=none", "--iptables=false",
                 "--log-level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace").splitlines()[-10:]
                self.stop()
                raise RuntimeFailure("dockerd did not start: " + " | ".join(tail))
            time.sleep(0.1)  # polling the socket, with a deadline
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """End dockerd (it stops its containers and containerd), then delete its roots."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        for mount_point in self._mounts_left():
            subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _mounts_left(self) -> list[str]:
        """What dockerd left mounted under its roots (its network namespace, at least),
        deepest first: rmtree cannot delete a mount point."""
        prefix = f"{self.root}/"
        try:
            lines = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return []
        points = [line.split()[1] for line in lines if len(line.split()) > 1]
        return sorted((point for point in points if point.startswith(prefix)), reverse=True)

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        client = None
        try:
            client = self.client()
            return bool(client.ping())
        except docker.errors.DockerException:
            return False
        finally:
            if client is not None:
                client.close()
