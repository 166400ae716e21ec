"""The strict JSON reader: nesting is refused before parsing, so nothing runs at the edge of
the recursion limit."""

from __future__ import annotations

import gc
import json

import pytest

from velocity.jsontext import MAX_DEPTH, MalformedJson, loads_strict


@pytest.fixture
def collector_on_every_allocation():
    """A garbage-collector callback that needs a few frames of stack, as the API's metrics
    hook does, run on (nearly) every allocation: were the parser to recurse to the limit, the
    callback would raise there and pytest would fail the test on the unraisable error."""
    def nested(frames: int) -> None:
        if frames:
            nested(frames - 1)

    def callback(phase: str, info: dict) -> None:
        nested(10)

    threshold = gc.get_threshold()
    gc.callbacks.append(callback)
    gc.set_threshold(1)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(callback)


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    b"[" * 100_000 + b"]" * 100_000,
    '{"a": ' * 5_000 + "1" + "}" * 5_000,
    "[1, " * (MAX_DEPTH + 1) + "1" + "]" * (MAX_DEPTH + 1),
])
def test_deep_nesting_is_refused_before_parsing(text, collector_on_every_allocation):
    with pytest.raises(MalformedJson, match=f"nested deeper than {MAX_DEPTH} levels"):
        loads_strict(text)


@pytest.mark.parametrize("value", [
    [[1]] * 1_000,  # many brackets, shallow
    {"files": [{"file_path": f"src/{i}.ts", "content": "[[[{{{" * 30} for i in range(100)]},
    ["[" * 500, "\"[[[", "\\"],  # brackets and escapes inside strings do not nest
])
def test_many_brackets_at_a_shallow_depth_are_read(value):
    text = json.dumps(value)
    assert loads_strict(text) == value
    assert loads_strict(text.encode()) == value


def test_the_depth_limit_is_exact():
    at_limit = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert loads_strict(at_limit) is not None
    with pytest.raises(MalformedJson, match="nested deeper"):
        loads_strict("[" + at_limit + "]")


def test_utf16_bodies_are_still_read():
    assert loads_strict(json.dumps({"a": [1, 2]}).encode("utf-16")) == {"a": [1, 2]}
