"""Shared pieces of service configuration: ``ROOST_<FIELD>`` environment variables.

Each service has its own frozen config dataclass (``plc.config``,
``pds.config``...); they all read the environment the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

__all__ = ["ENV_PREFIX", "from_env", "typed_converter"]

ENV_PREFIX = "ROOST_"


def from_env(
    cls: type[Any],
    env: Mapping[str, str] | None,
    convert: Callable[[str, str], Any],
    overrides: Mapping[str, Any],
) -> Any:
    """Build ``cls`` from ``ROOST_<FIELD>`` variables; non-None ``overrides`` win.

    ``convert(field_name, raw_text)`` turns a variable's text into the field's
    value (raising ``ValueError`` with a clear message); the ``version`` field
    is never read from the environment.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name == "version":
            continue
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is None or raw == "":
            continue
        values[f.name] = convert(f.name, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def typed_converter(
    *,
    ints: Collection[str] = (),
    floats: Collection[str] = (),
    bools: Collection[str] = (),
    tuples: Mapping[str, str] | Collection[str] = (),
    paths: Collection[str] = ("data_dir",),
) -> Callable[[str, str], Any]:
    """A ``convert`` for :func:`from_env` from the names of each field kind.

    Numbers are checked (a clear ``ValueError`` naming the variable), booleans
    accept ``1/true/yes/on``, tuples split on ``,`` unless ``tuples`` maps the
    field to another separator, paths become :class:`~pathlib.Path`; any other
    field keeps its text.
    """
    separators = dict(tuples) if isinstance(tuples, Mapping) else dict.fromkeys(tuples, ",")

    def convert(name: str, raw: str) -> Any:
        try:
            if name in ints:
                return int(raw)
            if name in floats:
                return float(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be a number, got {raw!r}") from None
        if name in bools:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if name in separators:
            return tuple(part.strip() for part in raw.split(separators[name]) if part.strip())
        if name in paths:
            return Path(raw)
        return raw

    return convert
