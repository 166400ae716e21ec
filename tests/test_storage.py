"""Object stores against real backends: a directory, real HTTP downloads, and moto's S3 server."""

from __future__ import annotations

import hashlib
import io
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import boto3
import httpx
import pytest
import uvicorn
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from velocity.download import download_app
from velocity.settings import Settings
from velocity.storage import (
    InvalidKey,
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    SignatureRejected,
    open_store,
    store_from_url,
)

SECRET = "local-store-test-secret-0123456789abcdef"
MiB = 1024 * 1024


class PatternStream:
    """A reproducible pseudo-random byte stream of `size` bytes, produced as it is read."""

    def __init__(self, size: int, seed: int = 7) -> None:
        self._left = size
        self._random = random.Random(seed)

    def read(self, size: int = -1) -> bytes:
        count = self._left if size < 0 else min(size, self._left)
        self._left -= count
        return self._random.randbytes(count)


def pattern_sha256(size: int, seed: int = 7) -> str:
    stream, digest = PatternStream(size, seed), hashlib.sha256()
    while chunk := stream.read(MiB):
        digest.update(chunk)
    return digest.hexdigest()


def streamed_sha256(store: ObjectStore, key: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with store.open(key) as stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def exercise_basic_operations(store: ObjectStore) -> None:
    """The contract every store keeps, run against each backend."""
    assert store.put_bytes("a/one.txt", b"one") == 3
    store.put_bytes("a/b/two.txt", b"two")
    store.put_bytes("c.txt", b"three")
    assert store.get("a/one.txt") == b"one"
    assert store.exists("a/b/two.txt") and not store.exists("a/b/none.txt")
    assert store.list() == ["a/b/two.txt", "a/one.txt", "c.txt"]
    assert store.list("a/") == ["a/b/two.txt", "a/one.txt"]
    assert store.list("a/o") == ["a/one.txt"]
    assert store.list("zzz/") == []
    store.put_bytes("a/one.txt", b"replaced")
    assert store.get("a/one.txt") == b"replaced"
    store.delete("a/one.txt")
    store.delete("a/one.txt")  # deleting twice is not an error
    assert not store.exists("a/one.txt")
    with pytest.raises(ObjectNotFound):
        store.get("a/one.txt")
    assert store.list() == ["a/b/two.txt", "c.txt"]


@pytest.mark.parametrize("key", ["", "../x", "a/../b", "/abs", "a\\b", "a//b", "./a", "a/\x00"])
def test_keys_that_could_escape_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path, "http://127.0.0.1", SECRET)
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        store.signed_url(key, 60)
    assert list(tmp_path.iterdir()) == []


def test_local_store_operations(tmp_path: Path) -> None:
    exercise_basic_operations(LocalStore(tmp_path / "store", "http://127.0.0.1", SECRET))


def test_local_streamed_put_of_20_mib(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "http://127.0.0.1", SECRET)
    size = 20 * MiB
    assert store.put("big/object.bin", PatternStream(size)) == size  # type: ignore[arg-type]
    assert streamed_sha256(store, "big/object.bin") == (pattern_sha256(size), size)
    assert (tmp_path / "big" / "object.bin").stat().st_size == size


def test_failed_local_put_keeps_the_old_object_and_no_temp_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "http://127.0.0.1", SECRET)
    store.put_bytes("k/object", b"old")

    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def read(self, size: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise OSError("connection reset")
            return b"new" * 1000

    with pytest.raises(OSError, match="connection reset"):
        store.put("k/object", Broken())  # type: ignore[arg-type]
    assert store.get("k/object") == b"old"
    assert sorted(path.name for path in (tmp_path / "k").iterdir()) == ["object"]


def test_signature_verification_names_the_failure(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "http://127.0.0.1", SECRET)
    expires = int(time.time()) + 60
    good = store.signature("a.zip", expires)
    store.verify_signature("a.zip", str(expires), good)
    cases = {
        "missing_signature": ("a.zip", str(expires), None),
        "malformed": ("a.zip", "soon", good),
        "bad_signature": ("b.zip", str(expires), good),
        "expired": ("a.zip", str(expires - 120), store.signature("a.zip", expires - 120)),
    }
    for reason, (key, when, signature) in cases.items():
        with pytest.raises(SignatureRejected) as caught:
            store.verify_signature(key, when, signature)
        assert caught.value.reason == reason


# --- signed downloads over real HTTP -------------------------------------------------------


@pytest.fixture(scope="module")
def served_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStore]:
    """A LocalStore whose download route runs in uvicorn on a loopback port.

    The socket is bound and listening before the server thread starts, so the first request
    waits in the accept queue instead of racing the server's startup.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    store = LocalStore(tmp_path_factory.mktemp("served"), f"http://127.0.0.1:{port}", SECRET)
    config = uvicorn.Config(download_app(store), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield store
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def fetch(url: str) -> httpx.Response:
    return httpx.get(url, timeout=30)


def test_signed_url_downloads_the_object(served_store: LocalStore) -> None:
    data = random.Random(1).randbytes(3 * MiB + 17)
    served_store.put_bytes("project-snapshots/p/s.zip", data)
    response = fetch(served_store.signed_url("project-snapshots/p/s.zip", 60))
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-type"] == "application/zip"


def test_expired_link_is_refused(served_store: LocalStore) -> None:
    served_store.put_bytes("expired.bin", b"data")
    expires = int(time.time()) - 5
    url = served_store.url_for(
        "expired.bin", expires, served_store.signature("expired.bin", expires)
    )
    response = fetch(url)
    assert response.status_code == 403
    assert response.json()["reason"] == "expired"


def test_tampered_links_are_refused(served_store: LocalStore) -> None:
    served_store.put_bytes("tamper.bin", b"data")
    url = served_store.signed_url("tamper.bin", 60)
    signature = url.rsplit("=", 1)[1]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    expires = int(url.split("expires=")[1].split("&")[0])
    tampered = [
        url.replace(signature, flipped),
        url.replace(f"expires={expires}", f"expires={expires + 3600}"),
        url.replace("tamper.bin", "other.bin"),
    ]
    for candidate in tampered:
        response = fetch(candidate)
        assert response.status_code == 403, candidate
        assert response.json()["reason"] == "bad_signature"
    response = fetch(url.split("?")[0])
    assert response.status_code == 403
    assert response.json()["reason"] == "missing_signature"


def test_link_signed_with_another_key_is_refused(served_store: LocalStore, tmp_path: Path) -> None:
    served_store.put_bytes("victim.bin", b"secret data")
    impostor = LocalStore(tmp_path, served_store.public_url, "some-other-secret-0123456789")
    response = fetch(impostor.signed_url("victim.bin", 60))
    assert response.status_code == 403
    assert response.json()["reason"] == "bad_signature"


def test_unknown_key_with_valid_signature_is_not_found(served_store: LocalStore) -> None:
    response = fetch(served_store.signed_url("never/stored.zip", 60))
    assert response.status_code == 404
    assert response.json()["reason"] == "not_found"


def test_parent_segments_in_the_path_are_refused(served_store: LocalStore) -> None:
    (served_store.root.parent / "outside.txt").write_text("must not be served")
    expires = int(time.time()) + 60
    signature = served_store.signature("x", expires)  # any valid-looking signature
    escaped = quote("../outside.txt", safe="")
    url = f"{served_store.public_url}/storage/v1/object/sign/{escaped}"
    response = fetch(f"{url}?expires={expires}&signature={signature}")
    assert response.status_code == 400
    assert response.json()["reason"] == "invalid_key"
    assert b"must not be served" not in response.content


# --- S3 through moto's server on loopback --------------------------------------------------

BUCKET = "velocity-test"
ACCESS = {"access_key_id": "testing", "secret_access_key": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 as a real HTTP server on a free loopback port, with one bucket."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS["access_key_id"],
        aws_secret_access_key=ACCESS["secret_access_key"],
    ).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture()
def s3_store(s3_endpoint: str, tmp_path: Path) -> Iterator[ObjectStore]:
    url = (
        f"s3://{BUCKET}?endpoint={s3_endpoint}&region=us-east-1&path_style=true"
        f"&access_key_id={ACCESS['access_key_id']}&secret_access_key={ACCESS['secret_access_key']}"
    )
    store = store_from_url(url, Settings(home=tmp_path))
    assert isinstance(store, S3Store)
    yield store
    for key in store.list():
        store.delete(key)


def test_s3_store_operations(s3_store: ObjectStore) -> None:
    exercise_basic_operations(s3_store)


def test_s3_multipart_upload_and_presigned_download(s3_store: ObjectStore) -> None:
    assert isinstance(s3_store, S3Store)
    size = 17 * MiB + 5
    key = "project-snapshots/p/big.zip"
    uploaded = s3_store.put(key, PatternStream(size), content_type="application/zip")  # type: ignore[arg-type]
    assert uploaded == size
    head = s3_store.client.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith("-3"), "8 MiB parts: uploaded as three parts"
    assert head["ContentType"] == "application/zip"
    assert streamed_sha256(s3_store, key) == (pattern_sha256(size), size)
    response = httpx.get(s3_store.signed_url(key, 60), timeout=60)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == pattern_sha256(size)


def test_s3_missing_object(s3_store: ObjectStore) -> None:
    assert not s3_store.exists("nothing/here")
    with pytest.raises(ObjectNotFound):
        s3_store.get("nothing/here")
    with pytest.raises(InvalidKey):
        s3_store.put_bytes("../escape", b"x")


# --- choosing a store from settings --------------------------------------------------------


def test_store_from_url(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, public_url="http://api.test/", storage_signing_secret=SecretStr(SECRET)
    )
    local = store_from_url(f"local://{tmp_path}/objects", settings)
    assert isinstance(local, LocalStore)
    assert local.root == (tmp_path / "objects").resolve()
    assert local.signed_url("a.zip", 60).startswith("http://api.test/storage/v1/object/sign/a.zip?")
    s3 = store_from_url("s3://bucket?region=eu-west-1&path_style=true", settings)
    assert isinstance(s3, S3Store) and s3.bucket == "bucket"
    bad_urls = {
        "ftp://host/x": "unknown scheme",
        "local://relative/path": "local:///absolute/path",
        "s3://?region=x": "names no bucket",
        "s3://bucket?regoin=x": "unknown parameters",
        "s3://bucket/prefix": "prefixes",
    }
    for url, message in bad_urls.items():
        with pytest.raises(ValueError, match=message) as caught:
            store_from_url(url, settings)
        assert url in str(caught.value)


def test_open_store_defaults_to_a_directory_under_home(tmp_path: Path) -> None:
    store = open_store(Settings(home=tmp_path, storage=""))
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "storage").resolve()
    store.put_bytes("k", b"v")
    assert (tmp_path / "storage" / "k").read_bytes() == b"v"
