"""The input rules shared by REST and Socket.IO, without Flask (``api/validation.py``
applies them to a request; its module docstring states every rule).

Raises nothing at import; the checks raise ``ValueError`` (pydantic turns it into a
400 naming the field).
"""
from __future__ import annotations

import re
import unicodedata
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints

from exchanges.venues import SUPPORTED_EXCHANGES

MAX_ID = 2**31 - 1  # PostgreSQL INTEGER (int32), also inside SQLite's int64
DECIMAL_INT_DIGITS = 18
DECIMAL_FRAC_DIGITS = 18
DECIMAL_PATTERN = rf"^[0-9]{{1,{DECIMAL_INT_DIGITS}}}(\.[0-9]{{1,{DECIMAL_FRAC_DIGITS}}})?$"
CREDENTIAL_PATTERN = r"^[\x21-\x7e]+$"
CLIENT_ORDER_ID_PATTERN = r"^[.A-Z:/a-z0-9_-]{1,36}$"  # Binance newClientOrderId

_DECIMAL = re.compile(DECIMAL_PATTERN)
_BAD_CATEGORIES = ("Cc", "Cs")


def control_character(value: str) -> str | None:
    """The message naming the first control character (Cc, NUL included) or lone
    surrogate (Cs) of ``value``; None when it has none."""
    for ch in value:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            return f"must not contain control characters (found U+{ord(ch):04X})"
    return None


def no_control(value: str) -> str:
    """``value`` unchanged when ``control_character`` finds nothing. Raises ValueError."""
    message = control_character(value)
    if message:
        raise ValueError(message)
    return value


def check_decimal(value: object) -> Decimal:
    """A positive decimal from a plain decimal string (DECIMAL_PATTERN), checked
    before any conversion. Raises ValueError with the rule."""
    if not isinstance(value, str):
        raise ValueError('must be a decimal string such as "0.001"')
    if not _DECIMAL.fullmatch(value):
        raise ValueError(f'must be a decimal string such as "0.001" (digits only, at most '
                         f"{DECIMAL_INT_DIGITS} before and {DECIMAL_FRAC_DIGITS} after the point, "
                         "no exponent)")
    d = Decimal(value)
    if d <= 0:
        raise ValueError("must be a positive decimal string")
    return d


# Text fields refuse control characters and lone surrogates.
NoControl = AfterValidator(no_control)
Username = Annotated[str, StringConstraints(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256), NoControl]
# A password presented at login: any non-empty text. The policy (8..256) applies when a
# password is set; a wrong password of any length is a 401, never a 400 quoting it.
LoginPassword = Annotated[str, StringConstraints(min_length=1, max_length=256), NoControl]
Symbol = Annotated[str, StringConstraints(min_length=2, max_length=32, pattern=r"^[A-Z0-9]+$")]
ClientOrderId = Annotated[str, StringConstraints(min_length=1, max_length=36,
                                                 pattern=CLIENT_ORDER_ID_PATTERN)]
# Printable ASCII, no spaces: what the venues accept in an API-key header.
Secret = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=CREDENTIAL_PATTERN)]
Label = Annotated[str, StringConstraints(max_length=64), NoControl]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
RefreshTokenStr = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                                   pattern=r"^[A-Za-z0-9_-]+$")]
# The venues a key or a ticker subscription may name: those of the venue registry
# (``exchanges.venues``), so that the spec documents them as an enum.
Exchange = Literal[SUPPORTED_EXCHANGES]  # type: ignore[valid-type]
