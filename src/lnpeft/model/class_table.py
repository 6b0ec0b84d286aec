"""Tables keyed by a class's qualified name, looked up along a module's class hierarchy: a table
entry for a transformers class never imports its module, and a subclass shares its base's entry."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

T = TypeVar("T")


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def lookup(table: dict[str, T], module: nn.Module) -> T | None:
    """The entry of `module`'s class, or of its nearest base class in `table`; None if neither."""
    for cls in type(module).__mro__:
        found = table.get(qualified_name(cls))
        if found is not None:
            return found
    return None
