"""The HTTP route that serves the local store's signed download links."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from typing import BinaryIO

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from velocity.storage import CHUNK_SIZE, SIGN_PATH, InvalidKey, LocalStore, SignatureRejected


def download_router(store: LocalStore) -> APIRouter:
    """`GET /storage/v1/object/sign/{key}` for `store`, to include in the HTTP API."""
    router = APIRouter()

    @router.get(SIGN_PATH + "{key:path}", name="signed_download", response_model=None)
    def signed_download(
        key: str,
        expires: str | None = Query(default=None),
        signature: str | None = Query(default=None),
    ) -> Response:
        """Serve the object if its link is genuine and unexpired.

        The file is opened before the response starts, so deleting or replacing the object
        mid-download cannot truncate it or fail halfway: the open handle keeps its bytes.
        """
        try:
            store.verify_signature(key, expires, signature)
            handle = open(store.path_of(key), "rb")
        except InvalidKey as error:
            return _refusal(400, "invalid_key", str(error))
        except SignatureRejected as error:
            return _refusal(403, error.reason, "the link is not valid for this object")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return _refusal(404, "not_found", f"no object stored under {key!r}")
        size = os.fstat(handle.fileno()).st_size
        media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        return StreamingResponse(
            _chunks(handle),
            media_type=media_type,
            headers={"content-length": str(size), "cache-control": "private, no-store"},
        )

    return router


def download_app(store: LocalStore) -> FastAPI:
    """A standalone app serving only the download route (tests, or mounting as is)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(download_router(store))
    return app


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK_SIZE):
            yield chunk


def _refusal(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "reason": reason}, status_code=status)
