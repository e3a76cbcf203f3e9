"""The one registry of adapter methods: adding a method is one `register` call.

Each method module (``karst``, ``kadaptation``, ``lora``, ``linear``, ``spt``) decorates its
`AdapterMethod` subclass with `register` (as PEFT registers its tuners). Everything else is
derived from what is registered, never listed by hand:

* `method_for`: the method an adapter_config.json or provenance record names;
* `standalone_configs`: the methods ``train --method`` builds from its options alone (SPT
  needs a placement, so it is trained with ``--placement spt``), and `method_options`,
  the options each one takes (its config's fields);
* `structured_configs`: the methods SPT may place as its structured modules.

`register` refuses a method whose name and config disagree (``name`` must equal its
``config_type.method``, the key adapter_config.json stores) and a name registered twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

from karst_deploy.errors import AdapterFileError

if TYPE_CHECKING:
    from karst_deploy.adapters.base import AdapterConfig, AdapterMethod

M = TypeVar("M", bound="type[AdapterMethod]")

#: Registered methods by name, in registration order.
METHODS: dict[str, AdapterMethod] = {}


def register(method: M) -> M:
    """Class decorator: make `method` available under its name (checked, see the docstring)."""
    name = method.name
    config_type = getattr(method, "config_type", None)
    if not dataclasses.is_dataclass(config_type) or getattr(config_type, "method", None) != name:
        raise TypeError(
            f"{method.__name__} registers as {name!r} but its config_type "
            f"{getattr(config_type, '__name__', config_type)!r} says method "
            f"{getattr(config_type, 'method', None)!r}; they must agree (it is the 'method' "
            "key adapter_config.json stores)."
        )
    if name in METHODS:
        raise TypeError(
            f"Adapter method {name!r} is registered twice ({type(METHODS[name]).__name__} and "
            f"{method.__name__})."
        )
    METHODS[name] = method()
    return method


def method_for(name: str) -> AdapterMethod:
    """The registered method `name`; AdapterFileError (naming the known ones) otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise AdapterFileError(
            f"Unknown adapter method '{name}'; karst-deploy knows {sorted(METHODS)}."
        ) from None


class _ConfigView(Mapping[str, "type[AdapterConfig]"]):
    """Name → config class of the registered methods with one flag set, read live."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def _selected(self) -> dict[str, type[AdapterConfig]]:
        return {n: m.config_type for n, m in METHODS.items() if getattr(m, self.flag)}

    def __getitem__(self, name: str) -> type[AdapterConfig]:
        return self._selected()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._selected())

    def __len__(self) -> int:
        return len(self._selected())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.flag}: {list(self)})"


#: Methods built from their own options (``train --method``); see the module docstring.
standalone_configs: Mapping[str, type[AdapterConfig]] = _ConfigView("standalone")
#: Methods SPT may use as its structured modules.
structured_configs: Mapping[str, type[AdapterConfig]] = _ConfigView("structurable")


def method_options(name: str) -> tuple[str, ...]:
    """The options `name`'s config takes: its fields, in declaration order."""
    return tuple(field.name for field in dataclasses.fields(method_for(name).config_type))
