"""Object stores behind one interface: a local directory with HMAC-signed URLs, or S3."""

from __future__ import annotations

import builtins
import hashlib
import hmac
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from io import BytesIO
from pathlib import Path
from typing import IO, BinaryIO, Literal, Protocol
from urllib.parse import parse_qs, quote, unquote, urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from velocity.settings import Settings, get_settings

DEFAULT_CONTENT_TYPE = "application/octet-stream"
CHUNK_SIZE = 1024 * 1024
MAX_KEY_LENGTH = 1024
SIGN_PATH = "/storage/v1/object/sign/"
# Part of every in-flight temp file's name, so listing can skip them and no key can collide.
TEMP_MARKER = ".velocity-tmp-"

SignatureFailure = Literal["missing_signature", "malformed", "expired", "bad_signature"]


class InvalidKey(ValueError):
    """A key that could escape the store's root or that S3 and a filesystem would read apart."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid object key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class ObjectNotFound(LookupError):
    """No object is stored under `key`."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object stored under {key!r}")
        self.key = key


class SignatureRejected(Exception):
    """A signed download link that must not be served, and why."""

    def __init__(self, reason: SignatureFailure) -> None:
        super().__init__(f"signed URL rejected: {reason}")
        self.reason: SignatureFailure = reason


class Readable(Protocol):
    """What `ObjectStore.open` yields: a binary stream read in chunks."""

    def read(self, size: int = -1, /) -> bytes: ...


class ObjectStore(Protocol):
    """Where snapshots and binaries live; flows and the API see only this."""

    def put(self, key: str, stream: BinaryIO, content_type: str = DEFAULT_CONTENT_TYPE) -> int: ...

    def put_bytes(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> int: ...

    def get(self, key: str) -> bytes: ...

    def open(self, key: str) -> AbstractContextManager[Readable]: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> builtins.list[str]: ...

    def exists(self, key: str) -> bool: ...

    def signed_url(self, key: str, ttl_seconds: int) -> str: ...


def validate_key(key: str) -> str:
    """Reject keys that are not plain relative paths, so no key reaches outside a local root.

    The same rule holds for S3, so a key that works on one store works on the other.
    """
    if not key:
        raise InvalidKey(key, "empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(key, f"longer than {MAX_KEY_LENGTH} characters")
    if key.startswith("/"):
        raise InvalidKey(key, "absolute")
    if "\\" in key:
        raise InvalidKey(key, "contains a backslash")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        raise InvalidKey(key, "contains a control character")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(key, "has an empty, '.' or '..' segment")
        if segment.startswith(TEMP_MARKER):
            raise InvalidKey(key, "uses the store's temp-file prefix")
    return key


def _sign(secret: str, key: str, expires: int) -> str:
    message = f"{key}\n{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class LocalStore:
    """Objects as files under one directory: the embedded default.

    Writes go to a temp file beside the target and are renamed into place, so a reader
    sees the old object or the new one, never a torn one. Downloads are served by
    `download_app` behind expiring HMAC-signed URLs.
    """

    def __init__(self, root: Path, public_url: str, secret: str) -> None:
        if not secret:
            raise ValueError("LocalStore needs a non-empty signing secret")
        self.root = root.resolve()
        self.public_url = public_url.rstrip("/")
        self._secret = secret
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        """The file that holds `key`; raises InvalidKey for keys that could escape the root."""
        return self.root.joinpath(*validate_key(key).split("/"))

    def put(self, key: str, stream: BinaryIO, content_type: str = DEFAULT_CONTENT_TYPE) -> int:
        """Copy `stream` into the store in chunks; returns the bytes written.

        `content_type` is not kept: the download route serves snapshot zips and binaries
        alike as the type guessed from the key.
        """
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f"{TEMP_MARKER}{path.name}.", delete=False
        )
        try:
            with handle:
                written = copy_stream(stream, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(handle.name, 0o644)
            os.replace(handle.name, path)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
        return written

    def put_bytes(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> int:
        return self.put(key, BytesIO(data), content_type)

    def get(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    @contextmanager
    def open(self, key: str) -> Iterator[Readable]:
        """The object as an open binary file, read lazily."""
        path = self.path_of(key)
        try:
            handle = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        with handle:
            yield handle

    def delete(self, key: str) -> None:
        """Remove the object if present (idempotent, like S3) and prune emptied directories."""
        path = self.path_of(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        for parent in path.parents:
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Every key starting with `prefix`, sorted; walks only below the prefix's directory."""
        directory, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*validate_key(directory).split("/")) if directory else self.root
        keys: builtins.list[str] = []
        for folder, _dirs, files in os.walk(start):
            relative = Path(folder).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(TEMP_MARKER):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def signature(self, key: str, expires: int) -> str:
        """Hex HMAC-SHA256 over `key + "\\n" + expires`: what a signed URL carries."""
        return _sign(self._secret, validate_key(key), expires)

    def signed_url(self, key: str, ttl_seconds: int) -> str:
        """A link to `key` that the download route serves until `ttl_seconds` from now."""
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        expires = int(time.time()) + ttl_seconds
        return self.url_for(key, expires, self.signature(key, expires))

    def url_for(self, key: str, expires: int, signature: str) -> str:
        """Assemble a download link; `signed_url` is the way to make a valid one."""
        path = quote(validate_key(key), safe="/")
        return f"{self.public_url}{SIGN_PATH}{path}?expires={expires}&signature={signature}"

    def verify_signature(
        self, key: str, expires: str | None, signature: str | None, now: float | None = None
    ) -> None:
        """Raise SignatureRejected unless the link for `key` is genuine and unexpired."""
        if not expires or not signature:
            raise SignatureRejected("missing_signature")
        if not re.fullmatch(r"[0-9]{1,12}", expires):
            raise SignatureRejected("malformed")
        expected = self.signature(key, int(expires)).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "surrogateescape")):
            raise SignatureRejected("bad_signature")
        if int(expires) < (time.time() if now is None else now):
            raise SignatureRejected("expired")


def copy_stream(source: Readable, target: IO[bytes]) -> int:
    """Copy in bounded chunks, whatever the object's size; returns the bytes copied."""
    written = 0
    while chunk := source.read(CHUNK_SIZE):
        target.write(chunk)
        written += len(chunk)
    return written


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable, not only the file's data."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _CountingReader:
    """Counts what boto3 reads, since `upload_fileobj` does not report a size.

    It has no `seek`, so s3transfer reads it strictly in order, buffering a bounded
    number of parts.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._stream.read(size)
        self.count += len(chunk)
        return chunk


class S3Store:
    """Objects in an S3 bucket (AWS or any S3-compatible store) via boto3.

    Credentials follow boto3's usual chain unless given explicitly.
    """

    # Parts of 8 MiB from 8 MiB up; four in flight keeps memory near 100 MiB at worst.
    transfer_config = TransferConfig(
        multipart_threshold=8 * 1024 * 1024,
        multipart_chunksize=8 * 1024 * 1024,
        max_concurrency=4,
    )

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path" if path_style else "auto"},
            ),
        )

    def put(self, key: str, stream: BinaryIO, content_type: str = DEFAULT_CONTENT_TYPE) -> int:
        """Upload `stream`, in parts when large; returns the bytes uploaded."""
        reader = _CountingReader(stream)
        self.client.upload_fileobj(
            reader,
            self.bucket,
            validate_key(key),
            ExtraArgs={"ContentType": content_type},
            Config=self.transfer_config,
        )
        return reader.count

    def put_bytes(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> int:
        self.client.put_object(
            Bucket=self.bucket, Key=validate_key(key), Body=data, ContentType=content_type
        )
        return len(data)

    def get(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    @contextmanager
    def open(self, key: str) -> Iterator[Readable]:
        """The object's body as a stream, read from the network as the caller reads."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=validate_key(key))
        except ClientError as error:
            raise _not_found_or(error, key) from error
        body = response["Body"]
        try:
            yield body
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=validate_key(key))

    def list(self, prefix: str = "") -> builtins.list[str]:
        keys: builtins.list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=validate_key(key))
        except ClientError as error:
            if isinstance(_not_found_or(error, key), ObjectNotFound):
                return False
            raise
        return True

    def signed_url(self, key: str, ttl_seconds: int) -> str:
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": validate_key(key)},
            ExpiresIn=ttl_seconds,
        )
        return url


def _not_found_or(error: ClientError, key: str) -> Exception:
    """ObjectNotFound for S3's two spellings of a missing key, else the error itself."""
    code = error.response.get("Error", {}).get("Code")
    if code in ("NoSuchKey", "404", "NotFound"):
        return ObjectNotFound(key)
    return error


_S3_PARAMETERS = {"endpoint", "region", "path_style", "access_key_id", "secret_access_key"}


def store_from_url(url: str, settings: Settings) -> ObjectStore:
    """The store a URL names: `local:///abs/path` or `s3://bucket?endpoint=...&region=...`."""
    parts = urlsplit(url)
    if parts.scheme == "local":
        path = unquote(parts.path)
        if parts.netloc or not path.startswith("/"):
            raise ValueError(f"storage URL {url!r}: use local:///absolute/path")
        return LocalStore(Path(path), settings.public_url, settings.storage_secret())
    if parts.scheme == "s3":
        return _s3_store_from_url(url)
    raise ValueError(
        f"storage URL {url!r}: unknown scheme {parts.scheme!r} (use local:// or s3://)"
    )


def _s3_store_from_url(url: str) -> S3Store:
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"storage URL {url!r}: names no bucket")
    if parts.path not in ("", "/"):
        raise ValueError(f"storage URL {url!r}: key prefixes are not supported")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = set(query) - _S3_PARAMETERS
    if unknown:
        raise ValueError(f"storage URL {url!r}: unknown parameters {sorted(unknown)}")
    path_style = query.get("path_style", "false").lower()
    if path_style not in ("true", "false", "1", "0"):
        raise ValueError(f"storage URL {url!r}: path_style must be true or false")
    return S3Store(
        parts.netloc,
        endpoint_url=query.get("endpoint"),
        region=query.get("region"),
        path_style=path_style in ("true", "1"),
        access_key_id=query.get("access_key_id"),
        secret_access_key=query.get("secret_access_key"),
    )


def open_store(settings: Settings | None = None) -> ObjectStore:
    """The configured store (`VELOCITY_STORAGE`; a directory under home when unset)."""
    settings = settings or get_settings()
    return store_from_url(settings.storage_url(), settings)
