"""Field checks and formats shared by the memory data functions (knowledge, history,
project files), so every endpoint refuses the same bad input with the same error.
"""

from __future__ import annotations

from datetime import datetime

from app.core.errors import InvalidInput
from app.core.models import as_utc
from app.core.names import LANGUAGES

# What `str.strip()` strips, as the inside of a regex class. Patterns published in the
# OpenAPI schema spell it out instead of `\s`: regex engines (Python's, Rust's, the
# fuzzer's generator) disagree on what `\s` covers.
SPACE_CHARS = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A JSON Schema `pattern` for "not blank": some character that `str.strip()` keeps.
NOT_BLANK_PATTERN = f"[^{SPACE_CHARS}]"


def check_language(language: str) -> str:
    """The language if it is one of the seed's table; InvalidInput otherwise."""
    if language not in LANGUAGES:
        raise InvalidInput(
            f"unknown language {language!r}",
            detail={"field": "language", "allowed": list(LANGUAGES)},
        )
    return language


def check_limit(limit: int, *, maximum: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise InvalidInput(
            f"limit must be between 1 and {maximum}", detail={"field": "limit", "max": maximum}
        )
    return limit


def iso_utc(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 in UTC (None stays None)."""
    return None if value is None else as_utc(value).isoformat()
