"""Where a snapshot is and what it must be: read from SNAPSHOT_URL or a velocity:snapshot reply."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class InvalidSnapshotRef(ValueError):
    """A snapshot location or manifest fact that cannot be used; the message says which."""


@dataclass(frozen=True)
class SnapshotRef:
    """A signed download URL (fragment removed) and the manifest facts to check it against."""

    url: str
    sha256: str
    watermark: int
    snapshot_id: str

    def __repr__(self) -> str:
        return (
            f"SnapshotRef(url={public_url(self.url)!r}, sha256={self.sha256!r}, "
            f"watermark={self.watermark}, snapshot_id={self.snapshot_id!r})"
        )


def public_url(url: str) -> str:
    """The URL without query and fragment: what may be logged of a signed link."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def parse_snapshot_url(value: str) -> SnapshotRef:
    """`https://…/x.zip?sig…#sha256=HEX&watermark=N&snapshot_id=UUID` → SnapshotRef."""
    parts = urlsplit(value)
    _check_http_url(parts.scheme, parts.netloc)
    facts = {key: values[-1] for key, values in parse_qs(parts.fragment).items()}
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
    return _ref(url, facts.get("sha256"), facts.get("watermark"), facts.get("snapshot_id"))


def snapshot_ref_from_reply(response: Mapping[str, object], base_url: str) -> SnapshotRef:
    """The `velocity:snapshot` reply's `{url, sha256, watermark, snapshot_id}` → SnapshotRef.

    A relative `url` is resolved against `base_url` (the gateway's HTTP origin).
    """
    url = response.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidSnapshotRef("the snapshot reply has no url")
    parts = urlsplit(urljoin(base_url, url))
    _check_http_url(parts.scheme, parts.netloc)
    absolute = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
    return _ref(
        absolute, response.get("sha256"), response.get("watermark"), response.get("snapshot_id")
    )


def _check_http_url(scheme: str, netloc: str) -> None:
    if scheme not in ("http", "https") or not netloc:
        raise InvalidSnapshotRef("must be an absolute http(s) URL")


def _ref(url: str, sha256: object, watermark: object, snapshot_id: object) -> SnapshotRef:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise InvalidSnapshotRef("sha256 must be 64 hex digits")
    if isinstance(watermark, bool):
        raise InvalidSnapshotRef("watermark must be a non-negative integer")
    try:
        mark = int(watermark)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise InvalidSnapshotRef("watermark must be a non-negative integer") from None
    if mark < 0:
        raise InvalidSnapshotRef("watermark must be a non-negative integer")
    try:
        snapshot = str(uuid.UUID(str(snapshot_id)))
    except ValueError:
        raise InvalidSnapshotRef("snapshot_id must be a UUID") from None
    return SnapshotRef(url=url, sha256=sha256.lower(), watermark=mark, snapshot_id=snapshot)
