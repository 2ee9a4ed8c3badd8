"""Configuration records read from dicts (checkpoints, config files): one strict reader for all of them."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, TypeVar

from sdm.errors import ConfigError

T = TypeVar("T")

MAX_SEED = 1_000_000  # the per-step generator seeds derived from a seed stay below 2^64


def strict_from_dict(cls: type[T], d: dict[str, Any], what: str) -> T:
    """``cls(**d)`` for the dataclass ``cls``, refusing fields it does not have.

    A misspelt or stale key would otherwise be a ``TypeError`` deep in ``__init__``, or, for a
    caller that filters keys, silently ignored; here it is a :class:`~sdm.errors.ConfigError`
    naming every unknown field: ``unknown {what} config fields: ['x', ...]``.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown {what} config fields: {sorted(unknown)}")
    return cls(**d)


def _kind_error(what: str, name: str, value, kind: str) -> ConfigError:
    return ConfigError(f"invalid {what} config: {name} must be {kind}, got {value!r} ({type(value).__name__})")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_field_types(record, what: str, *, ints=(), reals=(), bools=(), strs=(), int_lists=(),
                      real_lists=()) -> None:
    """Refuse a field of ``record`` whose value has the wrong type, naming it in a :class:`ConfigError`
    (``invalid {what} config: ch must be an integer, got '16' (str)``): bools are not ints, strings
    are not numbers, numbers are finite.  Ints become ``int``, reals ``float``, lists tuples."""
    def put(name, value):
        object.__setattr__(record, name, value)  # also on frozen records

    for name in ints:
        v = getattr(record, name)
        if not _is_int(v):
            raise _kind_error(what, name, v, "an integer")
        put(name, int(v))
    for name in reals:
        v = getattr(record, name)
        if not _is_real(v) or not math.isfinite(v):
            raise _kind_error(what, name, v, "a finite number")
        put(name, float(v))
    for name in bools:
        v = getattr(record, name)
        if not isinstance(v, bool):
            raise _kind_error(what, name, v, "true or false")
    for name in strs:
        v = getattr(record, name)
        if not isinstance(v, str):
            raise _kind_error(what, name, v, "a string")
    for names, ok, conv, kind in ((int_lists, _is_int, int, "a list of integers"),
                                  (real_lists, lambda x: _is_real(x) and math.isfinite(x), float,
                                   "a list of finite numbers")):
        for name in names:
            v = getattr(record, name)
            if not isinstance(v, (list, tuple)) or not all(ok(x) for x in v):
                raise _kind_error(what, name, v, kind)
            put(name, tuple(conv(x) for x in v))


def check_rules(record, what: str, rules) -> None:
    """``rules``: ``(field, holds, "must be ...")`` triples; the first that fails is a :class:`ConfigError`
    ``invalid {what} config: {field}={value!r} must be {rule}``."""
    for name, ok, rule in rules:
        if not ok:
            raise ConfigError(f"invalid {what} config: {name}={getattr(record, name)!r} must be {rule}")


__all__ = ["strict_from_dict", "check_field_types", "check_rules", "MAX_SEED"]
