"""Shared pieces of service configuration: ``ROOST_<FIELD>`` environment variables.

Each service has its own frozen config dataclass (``plc.config``,
``pds.config``...); they all read the environment the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

__all__ = ["ENV_PREFIX", "from_env"]

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
