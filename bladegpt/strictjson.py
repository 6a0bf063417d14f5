"""Every JSON BladeGPT writes goes through `dumps`: strict JSON, whatever the numbers.

Python's json writes NaN and Infinity as bare words that jq, pandas and strict parsers reject. Here a
float that is not finite becomes null ("no value": a loss that diverged, a speed that could not be
measured), and json.dumps(allow_nan=False) guards the rest, so a non-finite value can never slip in.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float, however deeply nested in dicts, lists and tuples, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    """json.dumps of `value` with non-finite floats written as null (never NaN or Infinity)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def number(value: Any) -> float | None:
    """A value read back from JSON as a finite number, or None (null, NaN from an older file, a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
