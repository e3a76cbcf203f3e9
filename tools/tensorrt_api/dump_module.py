"""Runs in a subprocess where the stubbed ``tensorrt_bindings`` imports; prints its surface.

Started by `surface.py` with ``PYTHONPATH`` on the unpacked wheel and ``LD_LIBRARY_PATH`` on
the stub libraries. Annotations lose their ``tensorrt_bindings.tensorrt.`` prefix.
"""

import enum
import inspect
import json
import re
import sys

import tensorrt_bindings as trt


def balanced(text, start):
    """Index just past the ')' closing text[start] == '('."""
    depth, quote = 0, None
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            if c == quote and text[i - 1] != "\\":
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def split_top(text, sep=","):
    parts, depth, quote, current = [], 0, None, ""
    for i, c in enumerate(text):
        if quote:
            if c == quote and text[i - 1] != "\\":
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += c
    if current.strip():
        parts.append(current.strip())
    return parts


def param(text):
    if text in ("*", "/") or text.startswith("*"):
        return {"name": text}
    name, _, rest = text.partition(":")
    annotation, default = rest, None
    pieces = split_top(rest, "=")
    if len(pieces) > 1:
        annotation, default = pieces[0], "=".join(pieces[1:]).strip()
    return {"name": name.strip(), "annotation": bare(annotation.strip()), "default": default}


def bare(annotation):
    """'tensorrt_bindings.tensorrt.ILogger' -> 'ILogger' (the import path varies by packaging)."""
    return (
        re.sub(r"\btensorrt(?:_bindings)?\.tensorrt\.", "", annotation)
        if annotation
        else annotation
    )


def signatures(name, doc):
    """Every overload 'name(params) -> ret' written in a pybind11 docstring."""
    found = []
    for line in (doc or "").splitlines():
        line = re.sub(r"^\s*\d+\.\s+", "", line)
        if not line.startswith(name + "("):
            continue
        end = balanced(line, len(name))
        ret = line[end:].strip()
        found.append(
            {
                "params": [param(p) for p in split_top(line[len(name) + 1 : end - 1])],
                "returns": bare(ret[2:].strip()) if ret.startswith("->") else None,
            }
        )
    overloaded = [s for s in found if s["params"] != [{"name": "*args"}, {"name": "**kwargs"}]]
    return overloaded or found


def python_signature(func):
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    params = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            params.append({"name": "*" + p.name})
        elif p.kind is p.VAR_KEYWORD:
            params.append({"name": "**" + p.name})
        else:
            default = None if p.default is p.empty else repr(p.default)
            params.append({"name": p.name, "annotation": "", "default": default})
    return [{"params": params, "returns": None}]


def value_of(obj):
    if isinstance(obj, enum.Enum):
        return {"kind": "value", "type": type(obj).__name__, "value": int(obj.value)}
    if hasattr(type(obj), "__members__") and hasattr(obj, "__int__"):
        return {"kind": "value", "type": type(obj).__name__, "value": int(obj)}
    if isinstance(obj, (bool, int, float, str)):
        return {"kind": "value", "type": type(obj).__name__, "value": obj}
    return {"kind": "value", "type": type(obj).__name__}


def routine(name, obj):
    doc_sigs = signatures(name, getattr(obj, "__doc__", None))
    return doc_sigs or python_signature(obj)


def member(cls, name):
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, property):
        sigs = signatures("", getattr(raw.fget, "__doc__", None) or "") if raw.fget else []
        if not sigs and raw.fget is not None:  # pybind11 getter doc: "(self: X) -> T"
            first = (raw.fget.__doc__ or "").strip().splitlines()
            text = first[0] if first else ""
            sigs = [{"returns": bare(text.rpartition("->")[2].strip()) or None}]
        return {
            "kind": "property",
            "type": sigs[0]["returns"] if sigs else None,
            "writable": raw.fset is not None,
        }
    if isinstance(raw, staticmethod):
        return {"kind": "staticmethod", "overloads": routine(name, getattr(cls, name))}
    if isinstance(raw, classmethod):
        return {"kind": "classmethod", "overloads": routine(name, getattr(cls, name))}
    obj = getattr(cls, name)
    if inspect.isclass(obj):
        return {"kind": "class", "name": obj.__name__}
    if callable(obj) and not hasattr(type(obj), "__members__"):
        return {"kind": "method", "overloads": routine(name, obj)}
    return value_of(obj)


def describe_class(cls):
    info = {
        "kind": "class",
        "bases": [b.__name__ for b in cls.__mro__[1:] if b is not object],
        "members": {},
    }
    members = getattr(cls, "__members__", None)
    if isinstance(members, dict) or issubclass(cls, enum.Enum):
        info["kind"] = "enum"
        info["enum_members"] = {
            k: int(v.value) if isinstance(v, enum.Enum) else int(v) for k, v in members.items()
        }
    for name in sorted(dir(cls)):
        if name.startswith("__") and name not in (
            "__init__",
            "__call__",
            "__getitem__",
            "__len__",
            "__iter__",
        ):
            continue
        if name.startswith("_pybind11"):
            continue
        try:
            info["members"][name] = member(cls, name)
        except Exception as exc:
            info["members"][name] = {"kind": "unreadable", "error": f"{type(exc).__name__}: {exc}"}
    return info


surface = {
    "version": trt.__version__,
    "module": "tensorrt",
    "classes": {},
    "functions": {},
    "attributes": {},
}
for name in sorted(dir(trt)):
    if name.startswith("__") and name != "__version__":
        continue
    obj = getattr(trt, name)
    if inspect.ismodule(obj):
        continue
    if inspect.isclass(obj):
        surface["classes"][name] = describe_class(obj)
    elif callable(obj) and not hasattr(type(obj), "__members__"):
        surface["functions"][name] = {"overloads": routine(name, obj)}
    else:
        surface["attributes"][name] = value_of(obj)
json.dump(surface, sys.stdout, indent=1, sort_keys=True)
