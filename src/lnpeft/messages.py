"""Values quoted in error messages: repr, cut to a readable length (a bad field can be megabytes)."""

from __future__ import annotations


def quote(value: object, limit: int = 80) -> str:
    """repr(value), cut in the middle to about `limit` characters with the length said."""
    text = repr(value)
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...{text[-half:]} ({len(text)} characters)"
