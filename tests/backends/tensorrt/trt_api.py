"""Static conformance of our TensorRT code with the real TensorRT Python API, version by version.

The surfaces (``data/tensorrt_api/<version>.json.gz``) are dumped from NVIDIA's bindings
wheels by ``tools/tensorrt_api/surface.py``. This checker reads our code with `ast` (TensorRT
is never imported), infers which TensorRT class each value is (the module from
``import tensorrt``, classes and enums read from it, instances from constructor calls, method
return annotations and property types of the surface, carried through our own functions'
parameters, returns, tuples, ``dict(...)`` records and ``self`` attributes) and checks every
use against one surface:

- every attribute or enum member read exists;
- every call matches one overload (arity, keyword names, required parameters);
- every attribute written is a writable property;
- a method overridden in a subclass of a TensorRT class (``ILogger.log``) can be called the
  way TensorRT calls it;
- no call whose result is TensorRT's success ``bool`` (``set_timing_cache``,
  ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3`` ...) is a bare statement.

A member missing from a version is accepted only where the code probes it: inside
``hasattr(X, "m")`` or ``getattr(X, "m", default)``, in the body of ``if hasattr(X, "m")`` or
after ``if not hasattr(X, "m"): raise/return``. A TensorRT-derived value whose class cannot be
inferred is itself a problem, so nothing is silently unchecked.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
SURFACES = Path(__file__).with_name("data") / "tensorrt_api"
#: Our files that touch the TensorRT Python API (every `import tensorrt` in the project).
TENSORRT_FILES = (
    "karst_deploy/backends/tensorrt/util.py",
    "karst_deploy/backends/tensorrt/runner.py",
    "karst_deploy/backends/tensorrt/loader.py",
    "karst_deploy/doctor.py",
)
#: Files whose module-level dict constants may name TensorRT members (getattr(enum, TABLE[k])).
CONSTANT_FILES = ("karst_deploy/backends/tensorrt/options.py",)
_BUILTIN_RETURNS = re.compile(
    r"^(None|bool|int|float|str|bytes|object|typing\.\w+|list|tuple|dict|numpy\.\w+|"
    r"collections\.abc\.\w+|Optional|Union)"
)


@cache
def surface(version: str) -> dict[str, Any]:
    with gzip.open(SURFACES / f"{version}.json.gz", "rt") as handle:
        return json.load(handle)


def versions() -> list[str]:
    found = [p.name.removesuffix(".json.gz") for p in SURFACES.glob("*.json.gz")]
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()))


# -- inferred types ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Module:
    """The tensorrt module."""


@dataclass(frozen=True)
class ClassRef:
    name: str  # a class or enum of the surface (nested: "ILogger.Severity")


@dataclass(frozen=True)
class Instance:
    name: str


@dataclass(frozen=True)
class Unresolved:
    """A TensorRT-derived value whose class the surface does not say (a checker gap)."""

    why: str


@dataclass(frozen=True)
class Method:
    owner: str | None  # class name, None for module functions
    name: str
    bound: bool  # called on an instance (self is implicit)


@dataclass(frozen=True)
class OurClass:
    qualname: str
    bases: tuple[Any, ...]


@dataclass(frozen=True)
class OurInstance:
    cls: OurClass


@dataclass(frozen=True)
class OurFunction:
    qualname: str


@dataclass(frozen=True)
class OurMethod:
    qualname: str


@dataclass(frozen=True)
class Record:
    """dict(key=value, ...) or a tuple of inferred types."""

    items: tuple[tuple[Any, Any], ...]

    def get(self, key: Any) -> Any:
        return dict(self.items).get(key)


@dataclass
class Problem:
    file: str
    line: int
    member: str
    version: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.member} — {self.message} (TensorRT {self.version})"


@dataclass
class Use:
    file: str
    line: int
    kind: str  # read, call, write, override
    member: str
    probed: bool


@dataclass
class Result:
    version: str
    problems: list[Problem] = field(default_factory=list)
    uses: list[Use] = field(default_factory=list)


# -- the surface, seen as types ----------------------------------------------------------------
def _class(surf: dict[str, Any], name: str) -> dict[str, Any] | None:
    if name in surf["classes"]:
        return surf["classes"][name]
    outer, _, inner = name.partition(".")
    if inner and outer in surf["classes"]:
        entry = surf["classes"][outer]["members"].get(inner)
        if entry and entry.get("kind") == "class":
            return surf["classes"].get(entry["name"])
    return None


def _type_from_annotation(surf: dict[str, Any], text: str | None) -> Any:
    if not text:
        return None
    text = text.strip()
    for pattern in (r"^typing\.Optional\[(.*)\]$", r"^Optional\[(.*)\]$", r"^(.*?) \| None$"):
        match = re.match(pattern, text)
        if match:
            text = match.group(1).strip()
    if "::" in text:  # a C++ name pybind11 wrote before the class was registered
        cpp = text.rpartition("::")[2]
        text = cpp if _class(surf, cpp) or not _class(surf, cpp[1:]) else cpp[1:]
    if _class(surf, text) is not None:
        return Instance(text)
    if _BUILTIN_RETURNS.match(text) or text.startswith(("list[", "tuple[", "dict[", "List[")):
        return None
    return Unresolved(f"return/property type '{text}'")


class _Scope:
    def __init__(self, parent: _Scope | None = None) -> None:
        self.parent = parent
        self.names: dict[str, Any] = {}
        self.probes: set[tuple[Any, str]] = set()

    def lookup(self, name: str) -> Any:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return None

    def probed(self, key: tuple[Any, str]) -> bool:
        scope: _Scope | None = self
        while scope is not None:
            if key in scope.probes:
                return True
            scope = scope.parent
        return False


def _dict_constants(paths: list[Path]) -> dict[str, list[str]]:
    """Module-level ``NAME = {"k": "v", ...}`` constants of `paths`: NAME → its str values."""
    constants = {}
    for path in paths:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                values = [v.value for v in node.value.values if isinstance(v, ast.Constant)]
                for target in targets:
                    if isinstance(target, ast.Name):
                        constants[target.id] = [str(v) for v in values]
    return constants


class Checker:
    """Checks files against one surface; `run` returns the problems and every use it checked."""

    def __init__(self, version: str, files: list[Path], constant_files: list[Path] = ()) -> None:
        self.version = version
        self.surf = surface(version)
        self.files = files
        self.trees = {path: ast.parse(path.read_text(), str(path)) for path in files}
        self.constants = _dict_constants([*files, *constant_files])
        self.functions: dict[str, tuple[Path, ast.FunctionDef, str | None]] = {}
        self.param_types: dict[str, dict[str, Any]] = {}
        self.returns: dict[str, Any] = {}
        self.class_attrs: dict[str, dict[str, Any]] = {}
        self.class_defs: dict[str, ast.ClassDef] = {}
        self.result = Result(version)
        self.reporting = False
        for path, tree in self.trees.items():
            self._register(path, tree.body, None)

    # -- registry of our functions and classes ----------------------------------------------
    def _register(self, path: Path, body: list[ast.stmt], owner: str | None) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef):
                qualname = f"{owner}.{node.name}" if owner else node.name
                self.functions.setdefault(qualname, (path, node, owner))
            elif isinstance(node, ast.ClassDef):
                self.class_defs[node.name] = node
                self._register(path, node.body, node.name)

    def run(self) -> Result:
        for _ in range(4):  # propagate parameter/return types to a fixed point
            self._pass()
        self.reporting = True
        self._pass()
        return self.result

    def _pass(self) -> None:
        for path, tree in self.trees.items():
            self.path = path
            module_scope = _Scope()
            for node in tree.body:  # a function may call one defined below it
                if isinstance(node, ast.FunctionDef):
                    module_scope.names[node.name] = OurFunction(node.name)
            self._block(tree.body, module_scope, None)

    # -- reporting ------------------------------------------------------------------------
    def _where(self) -> str:
        return str(self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path)

    def _use(self, node: ast.AST, kind: str, member: str, probed: bool) -> None:
        if self.reporting:
            self.result.uses.append(Use(self._where(), node.lineno, kind, member, probed))

    def _problem(self, node: ast.AST, member: str, message: str) -> None:
        if self.reporting:
            self.result.problems.append(
                Problem(self._where(), node.lineno, member, self.version, message)
            )

    # -- statements -----------------------------------------------------------------------
    def _block(self, body: list[ast.stmt], scope: _Scope, cls: str | None) -> None:
        for stmt in body:
            self._stmt(stmt, scope, cls)

    def _stmt(self, stmt: ast.stmt, scope: _Scope, cls: str | None) -> None:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            self._import(stmt, scope)
        elif isinstance(stmt, ast.FunctionDef):
            qualname = f"{cls}.{stmt.name}" if cls else stmt.name
            scope.names[stmt.name] = OurFunction(qualname) if not cls else OurMethod(qualname)
            self._function(stmt, qualname, scope, cls)
        elif isinstance(stmt, ast.ClassDef):
            bases = tuple(self._expr(b, scope) for b in stmt.bases)
            our = OurClass(stmt.name, bases)
            scope.names[stmt.name] = our
            self._overrides(stmt, bases)
            self._block(stmt.body, _Scope(scope), stmt.name)
        elif isinstance(stmt, ast.Assign):
            value = self._expr(stmt.value, scope)
            for target in stmt.targets:
                self._assign(target, value, scope, cls)
        elif isinstance(stmt, ast.AnnAssign | ast.AugAssign):
            value = self._expr(stmt.value, scope) if stmt.value else None
            if isinstance(stmt, ast.AugAssign):
                self._expr(stmt.target, scope)
            self._assign(stmt.target, value, scope, cls)
        elif isinstance(stmt, ast.If):
            self._if(stmt, scope, cls)
        elif isinstance(stmt, ast.For):
            self._expr(stmt.iter, scope)
            self._assign(stmt.target, None, scope, cls)
            self._block(stmt.body + stmt.orelse, scope, cls)
        elif isinstance(stmt, ast.While):
            self._expr(stmt.test, scope)
            self._block(stmt.body + stmt.orelse, scope, cls)
        elif isinstance(stmt, ast.With):
            for item in stmt.items:
                value = self._expr(item.context_expr, scope)
                if item.optional_vars is not None:
                    self._assign(item.optional_vars, None if value is None else value, scope, cls)
            self._block(stmt.body, scope, cls)
        elif isinstance(stmt, ast.Try):
            self._block(stmt.body, scope, cls)
            for handler in stmt.handlers:
                self._block(handler.body, scope, cls)
            self._block(stmt.orelse + stmt.finalbody, scope, cls)
        elif isinstance(stmt, ast.Return):
            if stmt.value is not None:
                value = self._expr(stmt.value, scope)
                function = scope.lookup("__function__")
                if function and value is not None:
                    self.returns[function] = _merge(self.returns.get(function), value)
        elif isinstance(stmt, ast.Delete):
            pass
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            self._expr(stmt.value, scope)
            label = getattr(stmt.value, "_trt_bool", None)
            if label:  # TensorRT reports failure through this bool (e.g. set_timing_cache)
                self._problem(stmt, label, "returns a success bool that is ignored")
        else:
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.expr):
                    self._expr(child, scope)

    def _import(self, stmt: ast.Import | ast.ImportFrom, scope: _Scope) -> None:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.name == "tensorrt":
                    scope.names[alias.asname or alias.name] = Module()
            return
        for alias in stmt.names:
            if alias.name in self.functions:
                scope.names[alias.asname or alias.name] = OurFunction(alias.name)

    def _function(
        self, node: ast.FunctionDef, qualname: str, parent: _Scope, cls: str | None
    ) -> None:
        scope = _Scope(parent)
        scope.names["__function__"] = qualname
        args = node.args
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        known = self.param_types.get(qualname, {})
        for i, param in enumerate(params):
            if i == 0 and cls is not None and param.arg == "self":
                our = self._our_class(cls, parent)
                scope.names["self"] = OurInstance(our) if our else None
            else:
                scope.names[param.arg] = known.get(param.arg)
        for default in [*args.defaults, *args.kw_defaults]:
            if default is not None:
                self._expr(default, parent)
        self._block(node.body, scope, None)

    def _our_class(self, name: str, scope: _Scope) -> OurClass | None:
        found = scope.lookup(name)
        return found if isinstance(found, OurClass) else OurClass(name, ())

    def _if(self, stmt: ast.If, scope: _Scope, cls: str | None) -> None:
        self._expr(stmt.test, scope)
        positive, negative = self._probe_of(stmt.test, scope)
        body_scope = _Scope(scope)
        if positive:
            body_scope.probes.add(positive)
        self._block_in(stmt.body, body_scope, scope, cls)
        else_scope = _Scope(scope)
        if negative:
            else_scope.probes.add(negative)
        self._block_in(stmt.orelse, else_scope, scope, cls)
        exits = stmt.body and isinstance(stmt.body[-1], ast.Raise | ast.Return)
        if negative and exits:  # if not hasattr(X, "m"): raise → m exists below
            scope.probes.add(negative)

    def _block_in(
        self, body: list[ast.stmt], inner: _Scope, outer: _Scope, cls: str | None
    ) -> None:
        """A branch: probes stay in `inner`, names bound there are visible after it."""
        for stmt in body:
            self._stmt(stmt, inner, cls)
        outer.names.update({k: v for k, v in inner.names.items() if k not in outer.names})

    def _probe_of(self, test: ast.expr, scope: _Scope) -> tuple[Any, Any]:
        """(probe true in the body, probe true in the else branch) for hasattr tests."""
        negated = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
        call = test.operand if negated else test
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "hasattr"
            and len(call.args) == 2
            and isinstance(call.args[1], ast.Constant)
        ):
            key = (self._expr(call.args[0], scope, report=False), call.args[1].value)
            return (None, key) if negated else (key, None)
        return None, None

    def _assign(self, target: ast.expr, value: Any, scope: _Scope, cls: str | None) -> None:
        if isinstance(target, ast.Name):
            if value is not None or target.id not in scope.names:
                scope.names[target.id] = value
        elif isinstance(target, ast.Tuple | ast.List):
            items = value.items if isinstance(value, Record) else ()
            for i, element in enumerate(target.elts):
                self._assign(element, dict(items).get(i), scope, cls)
        elif isinstance(target, ast.Attribute):
            owner = self._expr(target.value, scope)
            self._write(target, owner, value)
        elif isinstance(target, ast.Subscript):
            self._expr(target.value, scope)
            self._expr(target.slice, scope)

    def _write(self, target: ast.Attribute, owner: Any, value: Any) -> None:
        name = target.attr
        if isinstance(owner, OurInstance):
            attrs = self.class_attrs.setdefault(owner.cls.qualname, {})
            attrs[name] = _merge(attrs.get(name), value)
            base = self._trt_base(owner.cls)
            if base is None:
                return
            owner = Instance(base)
            entry = self._member(base, name)
            if entry is None:
                return  # a new attribute of our subclass
        if isinstance(owner, Instance | ClassRef):
            member = f"{owner.name}.{name}"
            self._use(target, "write", member, False)
            entry = self._member(owner.name, name)
            if entry is None:
                self._problem(target, member, "written but does not exist")
            elif entry.get("kind") != "property":
                self._problem(target, member, f"written but is a {entry.get('kind')}")
            elif not entry.get("writable"):
                self._problem(target, member, "written but is a read-only property")
        elif isinstance(owner, Module):
            self._problem(target, f"tensorrt.{name}", "assigning to the tensorrt module")
        elif isinstance(owner, Unresolved):
            self._problem(target, name, f"written on a value of unknown class ({owner.why})")

    def _trt_base(self, cls: OurClass) -> str | None:
        for base in cls.bases:
            if isinstance(base, ClassRef):
                return base.name
        return None

    def _overrides(self, node: ast.ClassDef, bases: tuple[Any, ...]) -> None:
        trt_bases = [b for b in bases if isinstance(b, ClassRef)]
        for base in trt_bases:
            for item in node.body:
                if not isinstance(item, ast.FunctionDef) or item.name == "__init__":
                    continue
                entry = self._member(base.name, item.name)
                member = f"{base.name}.{item.name}"
                if entry is None or entry.get("kind") != "method":
                    continue
                self._use(item, "override", member, False)
                ours = item.args
                positional = len(ours.posonlyargs) + len(ours.args)
                required = positional - len(ours.defaults)
                for overload in entry["overloads"]:
                    theirs = [p for p in overload["params"] if not p["name"].startswith("*")]
                    if required <= len(theirs) <= positional or ours.vararg:
                        break
                else:
                    shown = "; ".join(_format(o) for o in entry["overloads"])
                    self._problem(
                        item,
                        member,
                        f"override takes {positional} positional parameter(s) but TensorRT "
                        f"calls it as {shown}",
                    )

    # -- expressions ----------------------------------------------------------------------
    def _member(self, class_name: str, name: str) -> dict[str, Any] | None:
        entry = _class(self.surf, class_name)
        return None if entry is None else entry["members"].get(name)

    def _expr(self, node: ast.expr | None, scope: _Scope, report: bool = True) -> Any:
        if node is None:
            return None
        saved = self.reporting
        self.reporting = self.reporting and report
        try:
            return self._eval(node, scope)
        finally:
            self.reporting = saved

    def _eval(self, node: ast.expr, scope: _Scope) -> Any:
        if isinstance(node, ast.Name):
            return scope.lookup(node.id)
        if isinstance(node, ast.Attribute):
            return self._attribute(self._eval(node.value, scope), node.attr, scope, node)
        if isinstance(node, ast.Call):
            return self._call(node, scope)
        if isinstance(node, ast.Subscript):
            owner = self._eval(node.value, scope)
            self._eval(node.slice, scope)
            if isinstance(owner, Record) and isinstance(node.slice, ast.Constant):
                return owner.get(node.slice.value)
            return None
        if isinstance(node, ast.Tuple):
            return Record(tuple((i, self._eval(e, scope)) for i, e in enumerate(node.elts)))
        if isinstance(node, ast.ListComp | ast.GeneratorExp | ast.SetComp | ast.DictComp):
            inner = _Scope(scope)
            for generator in node.generators:
                self._eval(generator.iter, inner)
                self._assign(generator.target, None, inner, None)
                for condition in generator.ifs:
                    self._eval(condition, inner)
            for part in ("elt", "key", "value"):
                if hasattr(node, part):
                    self._eval(getattr(node, part), inner)
            return None
        if isinstance(node, ast.IfExp):
            self._eval(node.test, scope)
            return _merge(self._eval(node.body, scope), self._eval(node.orelse, scope))
        if isinstance(node, ast.BoolOp):
            values = [self._eval(v, scope) for v in node.values]
            return _merge(values[0], values[-1])
        if isinstance(node, ast.Lambda):
            return None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._eval(child, scope)
            elif isinstance(child, ast.comprehension | ast.keyword):
                for grandchild in ast.iter_child_nodes(child):
                    if isinstance(grandchild, ast.expr):
                        self._eval(grandchild, scope)
        return None

    def _attribute(self, owner: Any, name: str, scope: _Scope, where: ast.AST) -> Any:
        if isinstance(owner, Unresolved):
            self._problem(where, name, f"read on a value of unknown class ({owner.why})")
            return Unresolved(owner.why)
        if isinstance(owner, OurInstance):
            attrs = self.class_attrs.get(owner.cls.qualname, {})
            if name in attrs:
                return attrs[name]
            method = f"{owner.cls.qualname}.{name}"
            if method in self.functions:
                return OurMethod(method)
            base = self._trt_base(owner.cls)
            if base is None:
                return None
            owner = Instance(base)
        if isinstance(owner, OurClass):
            base = self._trt_base(owner)
            if base is None:
                return None
            owner = ClassRef(base)
        if not isinstance(owner, Module | ClassRef | Instance):
            return None
        # inside hasattr(X, "m") / getattr(X, "m", default) itself, or a block they guard
        probed = scope.probed((owner, name)) or getattr(where, "_probe", False)
        if isinstance(owner, Module):
            member = f"tensorrt.{name}"
            self._use(where, "read", member, probed)
            if name in self.surf["classes"]:
                return ClassRef(name)
            if name in self.surf["functions"]:
                return Method(None, name, False)
            if name in self.surf["attributes"]:
                value = self.surf["attributes"][name]
                return Instance(value["type"]) if _class(self.surf, value["type"]) else None
            if not probed:
                self._problem(where, member, "does not exist")
            return None
        member = f"{owner.name}.{name}"
        self._use(where, "read", member, probed)
        entry = self._member(owner.name, name)
        if entry is None:
            if not probed:
                self._problem(where, member, "does not exist")
            return None
        kind = entry.get("kind")
        if kind == "class":
            return ClassRef(entry["name"] if _class(self.surf, entry["name"]) else member)
        if kind in ("method", "staticmethod", "classmethod"):
            bound = isinstance(owner, Instance) or kind != "method"
            return Method(owner.name, name, bound)
        if kind == "property":
            if isinstance(owner, ClassRef):
                return None  # the property object itself
            return _type_from_annotation(self.surf, entry.get("type"))
        if kind == "value":
            return Instance(entry["type"]) if _class(self.surf, entry["type"]) else None
        return Unresolved(f"{member} is {kind}")

    def _call(self, node: ast.Call, scope: _Scope) -> Any:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and node.args:
            return self._getattr(node, scope)
        if isinstance(func, ast.Name) and func.id == "dict" and not node.args:
            return Record(tuple((k.arg, self._eval(k.value, scope)) for k in node.keywords))
        target = self._eval(func, scope)
        args = [self._eval(a.value if isinstance(a, ast.Starred) else a, scope) for a in node.args]
        kwargs = {k.arg: self._eval(k.value, scope) for k in node.keywords}
        if isinstance(target, ClassRef):
            self._check_call(node, target.name, "__init__", True, f"{target.name}(...)")
            return Instance(target.name)
        if isinstance(target, Method):
            return self._method_call(node, target)
        if isinstance(target, OurClass):
            return OurInstance(target)
        if isinstance(target, OurFunction | OurMethod):
            return self._our_call(target.qualname, args, kwargs, isinstance(target, OurMethod))
        if isinstance(target, Unresolved):
            self._problem(node, "call", f"calling a value of unknown class ({target.why})")
        return None

    def _getattr(self, node: ast.Call, scope: _Scope) -> Any:
        owner = self._eval(node.args[0], scope)
        name_node = node.args[1] if len(node.args) > 1 else None
        probe = node.func.id == "hasattr" or len(node.args) == 3
        if isinstance(name_node, ast.Constant) and isinstance(name_node.value, str):
            names = [name_node.value]
        elif isinstance(name_node, ast.Subscript) and isinstance(name_node.value, ast.Name):
            names = self.constants.get(name_node.value.id, [])
            self._eval(name_node, scope)
            if not names and isinstance(owner, Module | ClassRef | Instance):
                self._problem(node, "getattr", "member name is not a known constant")
        else:
            if isinstance(owner, Module | ClassRef | Instance):
                self._problem(node, "getattr", "member name cannot be resolved statically")
            return None
        for arg in node.args[2:]:
            self._eval(arg, scope)
        node._probe = probe  # type: ignore[attr-defined]
        results = [self._attribute(owner, name, scope, node) for name in names]
        if node.func.id == "hasattr":
            return None
        return results[0] if len(results) == 1 else None

    def _method_call(self, node: ast.Call, method: Method) -> Any:
        if method.owner is None:
            entry = self.surf["functions"].get(method.name)
            overloads = entry["overloads"] if entry else []
            self._use(node, "call", f"tensorrt.{method.name}", False)
            self._match(node, overloads, False, f"tensorrt.{method.name}")
            return _type_from_annotation(self.surf, overloads[0]["returns"]) if overloads else None
        label = f"{method.owner}.{method.name}"
        return self._check_call(node, method.owner, method.name, method.bound, label)

    def _check_call(self, node: ast.Call, owner: str, name: str, bound: bool, label: str) -> Any:
        entry = self._member(owner, name)
        self._use(node, "call", label, False)
        if entry is None:
            if name == "__init__":
                self._problem(node, label, f"{owner} cannot be constructed from Python")
            return None
        overload = self._match(node, entry.get("overloads", []), bound, label)
        if overload is None or name == "__init__":
            return None
        if overload.get("returns") == "bool":
            node._trt_bool = label  # type: ignore[attr-defined]
        return _type_from_annotation(self.surf, overload.get("returns"))

    def _match(
        self, node: ast.Call, overloads: list[dict[str, Any]], bound: bool, label: str
    ) -> dict[str, Any] | None:
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            return overloads[0] if overloads else None
        reasons = []
        for overload in overloads:
            why = _mismatch(overload, len(node.args), [k.arg for k in node.keywords], bound)
            if why is None:
                return overload
            reasons.append(f"{_format(overload)}: {why}")
        self._problem(node, label, "no overload matches the call: " + "; ".join(reasons))
        return None

    def _our_call(self, qualname: str, args: list[Any], kwargs: dict[str, Any], bound: bool) -> Any:
        found = self.functions.get(qualname)
        if found is None:
            return self.returns.get(qualname)
        _, node, _ = found
        params = [p.arg for p in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]]
        if bound:
            params = params[1:]
        known = self.param_types.setdefault(qualname, {})
        for name, value in [*zip(params, args, strict=False), *kwargs.items()]:
            if value is not None:
                known[name] = _merge(known.get(name), value)
        return self.returns.get(qualname)


def _merge(old: Any, new: Any) -> Any:
    """The more informative of two inferred types (records merged item by item)."""
    if old is None:
        return new
    if new is None:
        return old
    if isinstance(old, Record) and isinstance(new, Record):
        keys = dict.fromkeys([k for k, _ in old.items] + [k for k, _ in new.items])
        return Record(tuple((k, _merge(old.get(k), new.get(k))) for k in keys))
    return old


def _format(overload: dict[str, Any]) -> str:
    params = []
    for p in overload["params"]:
        text = p["name"] + (f"={p['default']}" if p.get("default") is not None else "")
        params.append(text)
    return f"({', '.join(params)})"


def _mismatch(
    overload: dict[str, Any], positional: int, keywords: list[str], bound: bool
) -> str | None:
    """Why a call with `positional` arguments and `keywords` cannot bind `overload` (or None)."""
    params = list(overload["params"])
    if bound and params and params[0]["name"] == "self":
        params = params[1:]
    varargs = any(p["name"].startswith("*") and not p["name"].startswith("**") for p in params)
    varkw = any(p["name"].startswith("**") for p in params)
    kw_only = False
    slots, kw_names = [], {}
    for p in params:
        if p["name"] == "*":
            kw_only = True
            continue
        if p["name"] == "/" or p["name"].startswith("*"):
            continue
        if not kw_only:
            slots.append(p)
        if not re.fullmatch(r"arg\d+", p["name"]):  # pybind11: unnamed args are positional-only
            kw_names[p["name"]] = p
    if positional > len(slots) and not varargs:
        return f"{positional} positional argument(s), at most {len(slots)}"
    filled = {p["name"] for p in slots[:positional]}
    for keyword in keywords:
        if keyword in filled:
            return f"'{keyword}' given twice"
        if keyword not in kw_names and not varkw:
            return f"no parameter '{keyword}'"
        filled.add(keyword)
    missing = [
        p["name"]
        for p in params
        if not p["name"].startswith("*")
        and p["name"] != "/"
        and p.get("default") is None
        and p["name"] not in filled
    ]
    if missing:
        return f"missing {', '.join(missing)}"
    return None


def check(version: str, files: list[Path] | None = None) -> Result:
    """Problems and uses of `files` (default: our TensorRT files) against one surface."""
    paths = files or [ROOT / f for f in TENSORRT_FILES]
    return Checker(version, paths, [ROOT / f for f in CONSTANT_FILES]).run()
