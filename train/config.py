"""Configuration records read from dicts (checkpoints, config files): one strict reader for all of them."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from sdm.errors import ConfigError

T = TypeVar("T")


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


__all__ = ["strict_from_dict"]
