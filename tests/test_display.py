"""tokensafe.display: markup escaped, control and invisible bidi / zero-width characters shown as ⟨U+XXXX⟩ markers."""

from __future__ import annotations

import html
import re

from hypothesis import given
from hypothesis import strategies as st

from tokensafe.display import UNSAFE_CHARACTERS, html_text, marker, visible

BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f"]
C0 = [chr(c) for c in range(0x20) if chr(c) not in "\n\t"]
C1 = [chr(c) for c in range(0x7F, 0xA0)]
INVISIBLE = ["\u061c", "\u200b", "\u200c", "\u200d", "\u2028", "\u2029", "\u2060", "\ufeff", "\U000e0041"]


def test_every_dangerous_character_becomes_its_marker_and_layout_is_kept():
    for char in BIDI + C0 + C1 + INVISIBLE:
        assert visible(f"a{char}b") == f"a\u27e8U+{ord(char):04X}\u27e9b", repr(char)
    assert marker("\u202e") == "\u27e8U+202E\u27e9"
    assert marker("\U000e0041") == "\u27e8U+E0041\u27e9"
    assert visible("line\n\tindented café 日本語 ✓") == "line\n\tindented café 日本語 ✓"


def test_html_text_escapes_markup_quotes_and_marks_bidi():
    text = "<script>alert(1)</script><img src=x onerror=alert(1)> 'q' \"d\" & \u202eevil\u2066"
    out = html_text(text)
    assert "<script" not in out and "<img" not in out and "'q'" not in out and '"d"' not in out
    assert "\u202e" not in out and "\u2066" not in out
    assert "<span class='cc' title='RIGHT-TO-LEFT OVERRIDE'>\u27e8U+202E\u27e9</span>" in out
    assert "<span class='cc' title='LEFT-TO-RIGHT ISOLATE'>\u27e8U+2066\u27e9</span>" in out
    # Dropping the marker spans and unescaping gives back the text with markers in place of the characters.
    assert html.unescape(re.sub(r"<[^>]+>", "", out)) == visible(text)


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60))
def test_no_unsafe_character_or_markup_survives(text):
    shown = visible(text)
    assert UNSAFE_CHARACTERS.search(shown) is None
    out = html_text(text)
    assert UNSAFE_CHARACTERS.search(out) is None
    # Every tag in the output is a marker span we wrote: text cannot open a tag or an attribute.
    assert {tag for tag in re.findall(r"<(/?\w+)", out)} <= {"span", "/span"}
    assert html.unescape(re.sub(r"<[^>]+>", "", out)) == shown
