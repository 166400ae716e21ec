"""Bugs the chaos seeds found, pinned down in small, fast tests (each names its seed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent.apply import ProjectWriter


def update(path: str, content: str) -> dict[str, object]:
    return {"action": "update", "file_path": path, "content": content,
            "content_hash": hashlib.sha256(content.encode()).hexdigest(), "version": 1}


async def test_bulk_replacing_a_file_by_a_directory(tmp_path: Path) -> None:
    """Chaos seed 1: a bulk that deletes the file `src/lib` and writes `src/lib/x.md` was
    refused (`not_a_directory`: writes were staged before deletes), leaving the agent stale."""
    writer = ProjectWriter(tmp_path)
    await writer.apply("file:update", update("src/lib", "a file for now"))
    outcome = await writer.apply("bulk:apply", {"files": [
        update("src/other.js", "beside it"),
        {"action": "delete", "file_path": "src/lib", "version": 2},
        update("src/lib/ファイル8.md", "now inside a directory")]})
    assert outcome.refused == 0 and outcome.written == 2 and outcome.deleted == 1
    assert (tmp_path / "src/lib/ファイル8.md").read_text() == "now inside a directory"
    assert (tmp_path / "src/other.js").read_text() == "beside it"
