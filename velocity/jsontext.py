"""Strict JSON for text from outside (request bodies, websocket frames): standard JSON only.

Python's `json.loads` accepts `NaN` and `Infinity`, turns `1e999` into infinity, returns
lone surrogates (`"\\ud800"`) that no UTF-8 database text can hold, and raises
RecursionError, not ValueError, on deeply nested input. Each of those reached a handler
that did not expect it; here every one is a `MalformedJson` with the reason. Nesting is
measured before parsing: a parser at the edge of the recursion limit breaks more than itself
(a garbage-collector callback that runs there raises too).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class MalformedJson(ValueError):
    """Text that is not standard, finite, valid-Unicode JSON of bounded depth."""


def loads_strict(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of `text`, or MalformedJson saying what is wrong with it."""
    try:
        if isinstance(text, bytes):  # as json.loads decodes bytes
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        _refuse_deep(text, max_depth)
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except MalformedJson:
        raise
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise MalformedJson(f"malformed JSON: {error}") from None
    _check_strings(value)
    return value


def _refuse_deep(text: str, max_depth: int) -> None:
    """MalformedJson if brackets outside strings nest deeper than `max_depth`."""
    if text.count("[") + text.count("{") <= max_depth:
        return
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > max_depth:
        raise MalformedJson(f"nested deeper than {max_depth} levels")


def _refuse_constant(name: str) -> Any:
    raise MalformedJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise MalformedJson(f"the number {text[:40]} is out of range")
    return number


def _check_strings(value: Any) -> None:
    """Refuse strings, keys included, that are not valid Unicode."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            for key, member in item.items():
                _check_text(key)
                pending.append(member)
        elif isinstance(item, list):
            pending.extend(item)


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise MalformedJson(
            f"a string holds a lone surrogate ({text[error.start]!r}), which is not Unicode text"
        ) from None
