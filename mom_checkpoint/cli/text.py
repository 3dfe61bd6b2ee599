"""Outside text made safe to print for people (no rich here: stderr messages of the hook use it too)."""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls; lone surrogates (the undecodable bytes of a file name, which would
# also make a strict UTF-8 stream raise); bidirectional overrides and isolates, which reorder what is
# shown; the line and paragraph separators. (Compiled on first use, by re's own cache: every hook call
# imports this module, few print outside text.)
_UNSAFE = "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]"
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(value: object) -> str:
    """``str(value)`` with every character a terminal would obey instead of show replaced by a visible
    escape, as Python writes it: ESC becomes ``\\x1b``, a C1 CSI ``\\x9b``, a newline ``\\n``, a
    right-to-left override ``\\u202e``, the undecodable byte 0xff of a file name ``\\xff``.

    Escaping (rather than a ``?``) keeps what was there readable and distinct for whoever investigates.
    Backslashes are left as they are, so a typed ``\\x1b`` looks like an escaped ESC: the point is that
    nothing reaches the terminal raw, not a reversible encoding (``--json`` is the exact form). Rich
    markup is not touched here: the renderers pass the result to rich as ``Text``, never as markup.
    """
    text = str(value)
    return re.sub(_UNSAFE, _visible, text)
