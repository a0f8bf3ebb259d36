"""Argument checking shared by recipes, data sections and options: keys and value types against a signature.

Torch-free, so every layer may use it (the data sources check their ``data:`` entries here, the
training recipes their stage and ``train:`` entries).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Options = TypeVar("Options")


class RecipeError(ValueError):
    """A recipe is missing, not valid YAML, or has unknown, missing or wrongly typed entries."""


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a parameter annotation (containers are checked by kind, not element)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is not None:
        hint = origin
    if hint in (list, tuple, Sequence):
        return isinstance(value, (list, tuple))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_arguments(function: Callable[..., Any], values: dict[str, Any], where: str) -> None:
    """Raise :class:`RecipeError` unless ``values`` are keyword arguments ``function`` accepts, with fitting types."""
    parameters = {
        name: parameter
        for name, parameter in inspect.signature(function).parameters.items()
        if name != "self" and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    hints = typing.get_type_hints(function)
    unknown = sorted(set(values) - set(parameters))
    if unknown:
        raise RecipeError(f"{where}: unknown entries {unknown}; expected some of {sorted(parameters)}")
    missing = sorted(name for name, p in parameters.items() if p.default is p.empty and name not in values)
    if missing:
        raise RecipeError(f"{where}: missing entries {missing}")
    for name, value in values.items():
        hint = hints.get(name, Any)
        if not _matches(value, hint):
            raise RecipeError(f"{where}: {name} must be {_describe(hint)}, got {value!r}")


def options_section(options_class: type[Options], values: Any, where: str) -> Options:
    """``options_class(**values)`` for the recipe section ``where``: a :class:`RecipeError` names a section that is
    no mapping, an unknown, missing or wrongly typed entry, or a value the class refuses (its ValueError)."""
    if not isinstance(values, dict):
        raise RecipeError(f"{where} must be a mapping of settings, got {values!r}")
    check_arguments(options_class, values, where)
    try:
        return options_class(**values)
    except ValueError as error:
        raise RecipeError(f"{where}: {error}") from None
