"""Dataset and model text made safe to show: in an HTML page and on a terminal.

The texts tokensafe displays (prompts, responses, token pieces, sample ids, source names) come from datasets that
may be adversarial. Two kinds of characters are dangerous besides markup:

- control characters (C0 except newline and tab, DEL, C1): ESC sequences drive a terminal, NUL and friends
  confuse tools that copy the text;
- invisible formatting characters: the bidirectional embeddings, overrides and isolates (U+202A-202E,
  U+2066-2069), the marks U+200E/U+200F/U+061C, zero-width characters (U+200B-200D, U+2060, U+FEFF, U+180E), line
  and paragraph separators (U+2028/9), invisible operators (U+2061-2064), interlinear annotations (U+FFF9-FFFB)
  and Unicode tag characters (U+E0000-E007F). They make the displayed text differ from the real one
  ("Trojan Source": a right-to-left override reverses what follows it; tag characters carry hidden text).

Every such character is replaced by a visible marker naming its code point, ``⟨U+202E⟩``, so the reader sees that
it is there and which it is; the raw character never reaches the output. In HTML the marker is wrapped in
``<span class='cc' title='UNICODE NAME'>`` (styled by the page) after the text itself went through
``html.escape`` (quotes included), so no text can open a tag or an attribute.
"""

from __future__ import annotations

import html
import re
import unicodedata

# Newline and tab are kept: they are layout, and the views render text with white-space: pre-wrap.
UNSAFE_CHARACTERS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f"
    "\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb"
    "\U000e0000-\U000e007f]"
)


def marker(char: str) -> str:
    """The visible stand-in for one unsafe character: ``⟨U+202E⟩``."""
    return f"\u27e8U+{ord(char):04X}\u27e9"


def visible(text: str) -> str:
    """``text`` with every unsafe character replaced by its marker (for terminals and plain-text logs)."""
    return UNSAFE_CHARACTERS.sub(lambda match: marker(match.group()), text)


def _marker_html(char: str) -> str:
    name = unicodedata.name(char, "control character")
    return f"<span class='cc' title='{html.escape(name, quote=True)}'>{marker(char)}</span>"


def html_text(text: str) -> str:
    """``text`` as HTML element content: markup escaped (quotes too), unsafe characters shown as markers."""
    return UNSAFE_CHARACTERS.sub(lambda match: _marker_html(match.group()), html.escape(text, quote=True))


# For pages that show markers: a boxed, muted look that tells a marker apart from text that happens to read alike.
MARKER_CSS = ".cc { color: #a00; border: 1px dotted #a00; border-radius: 2px; font-size: 0.8em; padding: 0 1px; }"
