"""The one JSON encoding of emsync's data, for the CLI's ``--json`` and the HTTP server alike.

Datetimes and dates become ISO 8601 strings (datetimes keep their UTC
offset); Decimals become JSON numbers.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal


def json_default(value: object) -> object:
    """``json.dumps`` ``default=`` hook. Raises TypeError for anything else, as json does."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def to_json(obj: object, *, indent: int | None = None) -> str:
    return json.dumps(obj, default=json_default, indent=indent)
