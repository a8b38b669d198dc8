"""The one parser for numbers the APIs send: Meta's decimal strings ("12.34"), Google's int64 strings and doubles.

Money and conversions stay exact (``Decimal``); nothing is read through
``float``. A value that is not a finite number is the platform's fault and
fails that integration with a ``FatalApiError`` naming what could not be read.
"""

from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation

from .errors import FatalApiError

ZERO = Decimal(0)


def api_decimal(value: object, source: str, what: str = "number") -> Decimal:
    """``value`` (a JSON string or number) as an exact Decimal; None or "" is 0.

    Raises:
        FatalApiError: "{source} returned a(n) {what} emsync cannot read: '...'".
    """
    if value is None or value == "":
        return ZERO
    try:
        result = Decimal(value if isinstance(value, (str, int)) else str(value))
    except (InvalidOperation, TypeError, ValueError):
        result = None
    if result is None or not result.is_finite():
        raise _unreadable(value, source, what)
    return result


# The general reading (``json``) takes a JSON number through float: beyond a double's range it is infinite there.
DOUBLE_MAX = Decimal(sys.float_info.max)


def finite(value: Decimal, source: str, what: str = "number") -> Decimal:
    """A typed decoder's Decimal, when it is a number the general reading takes too: finite (the decoder accepts
    "NaN" and "Infinity") and within a double's range (it reads the JSON number 1e400 exactly).

    Raises:
        FatalApiError: the same message as ``api_decimal``'s.
    """
    if value.is_finite() and -DOUBLE_MAX <= value <= DOUBLE_MAX:
        return value
    raise _unreadable(value, source, what)


def _unreadable(value: object, source: str, what: str) -> FatalApiError:
    article = "an" if what[:1] in ("a", "e", "i", "o", "u") else "a"
    return FatalApiError(f"{source} returned {article} {what} emsync cannot read: {str(value)[:40]!r}")


def api_int(value: object, source: str, what: str = "count") -> int:
    """A whole count (impressions, clicks) sent as a string or number; fractions are truncated as the APIs never send them."""
    return int(api_decimal(value, source, what))
