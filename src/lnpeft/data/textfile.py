"""Read a user's text file as UTF-8 (a BOM allowed), naming the line of a bad byte."""

from __future__ import annotations

import codecs
from pathlib import Path


def read_utf8(path: Path | str, error: type[Exception] = ValueError) -> str:
    """The file's text without a leading BOM; invalid UTF-8 raises `error` naming file and line."""
    # the BOM is removed before decoding: utf-8-sig's error offsets skip it, naming a wrong line
    raw = Path(path).read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not valid UTF-8 ({err.reason})") from None
