"""Type checks for the JSON records karst-deploy reads back: ONNX provenance, engine sidecars.

A record comes from a file anyone can edit. Each key a reader may use is checked for its type
and range before anything reads it, and a refusal names the file and the key (``'m.onnx':
provenance key 'img_size' must be ...``). A checker is a function ``(value) -> str | None``
returning what was expected when `value` does not fit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from karst_deploy.errors import InputError, clip

Checker = Callable[[Any], "str | None"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,120}")


def text(limit: int = 1000) -> Checker:
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or len(value) > limit:
            return f"a string of at most {limit} characters"
        return None

    return check


def name(value: Any) -> str | None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        return "a name of letters, digits, '_', '.' or '-' (at most 120)"
    return None


def sha256(value: Any) -> str | None:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        return "a sha256: 64 lower-case hexadecimal digits"
    return None


def pattern(regex: str, description: str) -> Checker:
    compiled = re.compile(regex)

    def check(value: Any) -> str | None:
        if not isinstance(value, str) or len(value) > 100 or not compiled.fullmatch(value):
            return description
        return None

    return check


def integer(low: int, high: int) -> Checker:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"an integer from {low} to {high}"
        return None

    return check


def number(low: float, high: float) -> Checker:
    def check(value: Any) -> str | None:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            return f"a finite number from {low} to {high}"
        return None

    return check


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def one_of(*choices: Any) -> Checker:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or value not in choices:
            return f"one of {list(choices)}"
        return None

    return check


def optional(checker: Checker) -> Checker:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        expected = checker(value)
        return None if expected is None else f"null or {expected}"

    return check


def either(*checkers: Checker) -> Checker:
    def check(value: Any) -> str | None:
        problems = [checker(value) for checker in checkers]
        return None if None in problems else " or ".join(p for p in problems if p)

    return check


def obj(value: Any) -> str | None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        return "a JSON object"
    return None


def _scalar(item: Any) -> bool:
    return (
        item is None
        or isinstance(item, (bool, int, float))
        or (isinstance(item, str) and len(item) <= 200)
    )


def scalars(value: Any) -> str | None:
    """An object of JSON scalars or short lists of numbers (what timm keyword arguments may
    be: Swin's ``depths``), no deeper nesting; `models.check_model_kwargs` checks the keys."""
    if obj(value) is not None or not all(
        _scalar(item)
        or (
            isinstance(item, list)
            and len(item) <= 16
            and all(isinstance(x, (bool, int, float)) for x in item)
        )
        for item in value.values()
    ):
        return (
            "a JSON object of scalars (numbers, strings, true/false, null) or short lists "
            "of numbers"
        )
    return None


def list_of(checker: Checker, length: int) -> Checker:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or len(value) != length:
            return f"a list of {length} items"
        for item in value:
            expected = checker(item)
            if expected is not None:
                return f"a list of {length} items, each {expected}"
        return None

    return check


def map_of(checker: Checker) -> Checker:
    def check(value: Any) -> str | None:
        if obj(value) is not None:
            return "a JSON object"
        for item in value.values():
            expected = checker(item)
            if expected is not None:
                return f"a JSON object whose values are each {expected}"
        return None

    return check


def validate(
    record: Any,
    schema: Mapping[str, Checker],
    where: str,
    *,
    required: tuple[str, ...] = (),
    nested: Mapping[str, Mapping[str, Checker]] | None = None,
    open_keys: bool = False,
) -> dict[str, Any]:
    """Refuse `record` unless it is an object of `schema`'s keys, each fitting its checker.

    `where` names the record ("'m.onnx': provenance"); `nested` gives schemas of object-valued
    keys, checked the same way but with unknown keys allowed (`open_keys`: also at this level).
    """
    if not isinstance(record, dict):
        raise InputError(f"{where} must be a JSON object, not a {type(record).__name__}.")
    missing = [key for key in required if key not in record]
    if missing:
        raise InputError(f"{where} lacks key '{missing[0]}' (required: {list(required)}).")
    for key, value in record.items():
        if key not in schema:
            if open_keys:
                continue
            raise InputError(
                f"{where} has key '{clip(key, 80)}', which karst-deploy does not write (known: "
                f"{sorted(schema)}); the record was edited or comes from another tool."
            )
        expected = schema[key](value)
        if expected is not None:
            raise InputError(f"{where} key '{key}': {clip(repr(value), 80)} is not {expected}.")
        if nested and key in nested and value is not None:
            validate(value, nested[key], f"{where} key '{key}'", open_keys=True)
    return record
