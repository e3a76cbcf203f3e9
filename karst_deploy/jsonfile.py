"""Parsing JSON that came from someone else: bounded size, depth and numbers, an object on top.

`json.loads` on hostile text raises `RecursionError` (nesting 100,000 deep), `ValueError`
(integers past Python's 4,300-digit limit) or returns a list where an object is expected;
`parse_object` turns every one of those into an `InputError` naming where the text came from.
"""

from __future__ import annotations

import json
from typing import Any

from karst_deploy.errors import InputError, clip

MAX_TEXT = 64 * 1024 * 1024  # characters
MAX_DEPTH = 32  # every record karst-deploy writes nests less than 10 deep
MAX_INT_DIGITS = 20  # 2**64 has 20 digits


class _Refused(Exception):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"the number {clip(text, 40)}, which overflows a float")
    return value


def _parse_constant(text: str) -> float:
    raise _Refused(f"'{text}', which is not a JSON number")


def _depth(value: Any) -> int:
    """Nesting depth of a parsed value, iteratively (no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_object(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse `text` (from `where`, e.g. a file name and key) into a JSON object, or refuse it."""
    value = parse_value(text, where)
    if not isinstance(value, dict):
        raise InputError(
            f"{clip(where)} must be a JSON object ({{...}}), not a {type(value).__name__}."
        )
    return value


def parse_value(text: str | bytes, where: str) -> Any:
    """Parse `text` into any JSON value, with the bounds of `parse_object`."""
    where = clip(where)
    if len(text) > MAX_TEXT:
        raise InputError(f"{where} is {len(text)} characters long; at most {MAX_TEXT} are read.")
    try:
        value = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
        )
    except _Refused as exc:
        raise InputError(f"{where} holds {exc}.") from None
    except RecursionError:
        raise InputError(f"{where} is nested too deeply to be a karst-deploy record.") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise InputError(f"{where} is not valid JSON: {clip(exc)}.") from None
    if _depth(value) > MAX_DEPTH:
        raise InputError(
            f"{where} is nested {_depth(value)} levels deep; karst-deploy records nest at most "
            f"{MAX_DEPTH}."
        )
    return value
