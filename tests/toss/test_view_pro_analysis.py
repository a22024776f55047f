"""Token-risk view (escaping, strike-through, terminal safety), TOSS-Pro's flagged-only data, ROC-AUC."""

from __future__ import annotations

import html
import itertools
import re

import numpy as np
import pytest

from tokensafe.data.dataset import tokenize_records
from tokensafe.data.records import Record
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.display import visible
from tokensafe.toss.analysis import provenance_report, roc_auc
from tokensafe.toss.pro import flagged_training_set
from tokensafe.toss.select import select_tokens
from tokensafe.toss.store import TokenScores, response_positions
from tokensafe.toss.view import (
    SampleView,
    TokenView,
    build_views,
    render_html,
    render_terminal,
    token_pieces,
    write_token_view,
)

EVIL = "<script>alert('x')</script> & \x1b[31mred\x1b[0m \"quoted\" café"


@pytest.fixture()
def evil_case(tokenizer):
    def chat(prompt: str, response: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]

    records = [
        Record("evil/<b>0</b>", chat("<img src=x onerror=alert(1)>", EVIL), "src<i>"),
        Record("ok/1", chat("hi", "hello there"), "ok", True),
    ]
    dataset = tokenize_records(records, tokenizer, max_length=128)
    positions = [response_positions(labels) for labels in dataset["labels"]]
    offsets = np.concatenate([[0], np.cumsum([p.size for p in positions])])
    total = int(offsets[-1])
    score = np.linspace(-2, 2, total).astype(np.float32)
    scores = TokenScores(offsets, np.concatenate(positions), score, np.zeros(total), "fp", "digest")
    return dataset, scores, select_tokens(scores, "global", rho=0.3)


def test_html_escapes_every_text_and_strikes_dropped_tokens(evil_case, tokenizer, tmp_path):
    dataset, scores, selection = evil_case
    path = write_token_view(tmp_path / "view.html", dataset, scores, selection, tokenizer, n_samples=2)
    page = path.read_text()
    assert "<script>" not in page and "<img" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # the prompt, escaped
    assert "evil/&lt;b&gt;0&lt;/b&gt;" in page and "src&lt;i&gt;" in page
    # The response, token spans joined and unescaped, is the original text (escape codes shown, not embedded).
    response = page[page.index("evil/&lt;b&gt;") :]
    response = response[response.index("<div class='response'>") :]
    response = response[: response.index("&lt;|im_end|&gt;")]
    shown = html.unescape(re.sub(r"<[^>]+>", "", response))
    assert shown == EVIL.replace("\x1b", "\u27e8U+001B\u27e9") and "\x1b" not in page
    assert page.count("class='t drop'") == int(selection.drop.sum())
    assert "café" in page  # multi-byte characters survive per-token decoding


def test_token_pieces_reassemble_the_text(tokenizer):
    ids = tokenizer(EVIL + " 日本語 ✓", add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids)


def test_terminal_view_colours_strikes_and_neutralises_escapes(evil_case, tokenizer):
    dataset, scores, selection = evil_case
    (view,) = build_views(dataset, scores, selection, tokenizer, [0])
    text = render_terminal(view, scale=2.0)
    assert "\x1b[9m" in text  # strike-through on dropped tokens
    assert "\x1b[31m" not in text and "\u27e8U+001B\u27e9" in text  # the sample's own escapes are shown, not run
    plain = render_terminal(view, scale=2.0, color=False)
    assert "\x1b" not in plain and "[" in plain


def test_render_html_without_sections(evil_case, tokenizer):
    dataset, scores, selection = evil_case
    views = build_views(dataset, scores, selection, tokenizer, [0, 1], show_provenance=False)
    page = render_html(views, scale=1.0, summary={"note": "<b>"})
    assert "&lt;b&gt;" in page and "harmful" not in page


def test_flagged_training_set_labels_only_flagged_tokens(evil_case):
    dataset, scores, _ = evil_case
    flagged = np.zeros(scores.n_tokens, bool)
    flagged[[1, 3]] = True  # two tokens of sample 0, none of sample 1
    train = flagged_training_set(dataset, scores, flagged, np.arange(2))
    assert len(train) == 1
    labelled = [t for t, label in enumerate(train[0]["labels"]) if label != IGNORE_INDEX]
    assert labelled == scores.positions[[1, 3]].tolist()
    assert all(train[0]["labels"][t] == train[0]["input_ids"][t] for t in labelled)
    assert train[0]["input_ids"] == dataset[0]["input_ids"][: labelled[-1] + 1]  # ends at the last flagged token


def brute_auc(score, positive) -> float:
    pos = [s for s, p in zip(score, positive, strict=True) if p]
    neg = [s for s, p in zip(score, positive, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        score = rng.integers(0, 5, 40).astype(float)
        positive = rng.random(40) < 0.3
        assert roc_auc(score, positive) == pytest.approx(brute_auc(score, positive))
    assert roc_auc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert np.isnan(roc_auc([1, 2], [True, True]))


def test_provenance_report_counts_dropped_shares(evil_case):
    dataset, scores, selection = evil_case
    report = provenance_report(np.array(dataset["is_harmful"]), scores, selection)
    harmful = np.array(dataset["is_harmful"])[scores.sample_ids()]
    assert report["harmful_tokens"] == int(harmful.sum())
    assert report["harmful_tokens_dropped"] == pytest.approx(selection.drop[harmful].mean(), abs=1e-4)
    assert report["benign_tokens_dropped"] == pytest.approx(selection.drop[~harmful].mean(), abs=1e-4)


def test_provenance_report_by_position_and_smoothed_auc(evil_case):
    dataset, scores, _ = evil_case
    harmful_samples = np.array(dataset["is_harmful"])
    harmful = harmful_samples[scores.sample_ids()]
    selection = select_tokens(scores, "global", 0.2, smooth=2)
    report = provenance_report(harmful_samples, scores, selection)
    position = scores.token_index()
    first = position < 5
    if harmful[first].any() and (~harmful[first]).any():
        assert report["token_auc_by_position"]["0-4"] == pytest.approx(
            brute_auc(scores.score[first], harmful[first]), abs=1e-4
        )
    assert report["token_auc_smoothed"] == pytest.approx(brute_auc(selection.ranked, harmful), abs=1e-4)
    assert report["mean_loss_u_harmful_tokens"] == pytest.approx(float(scores.loss_u[harmful].mean()), abs=1e-4)
    assert "token_auc_smoothed" not in provenance_report(harmful_samples, scores, select_tokens(scores))


def test_provenance_report_gives_none_where_a_position_bin_lacks_a_class(evil_case):
    import json

    dataset, scores, _ = evil_case
    harmful_samples = np.array(dataset["is_harmful"])
    all_harmful = np.ones_like(harmful_samples)
    report = provenance_report(all_harmful, scores)  # no benign sample: no AUC anywhere
    assert report["token_auc"] is None and report["sample_auc_mean_score"] is None
    assert set(report["token_auc_by_position"].values()) == {None}
    json.loads(json.dumps(report, allow_nan=False))  # valid strict JSON


# Every character the views must neutralise, with markup that would run script or add an attribute if it got through.
HOSTILE_CHARS = (
    [chr(c) for c in range(0x20) if chr(c) not in "\n\t"]
    + [chr(c) for c in range(0x7F, 0xA0)]
    + ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f"]
)
HOSTILE = (
    "<script>alert(1)</script><img src=x onerror=alert(2)>\"' onmouseover='alert(3)' "
    + "".join(f"[{c}]" for c in HOSTILE_CHARS)
    + " nice \u202eelif.exe\u202c\n\tdone"
)
PAGE_TAGS = {"!doctype", "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "tr", "th", "td"}
PAGE_TAGS |= {"div", "details", "summary", "span"}


def assert_neutralised(page: str, chars: list[str]) -> None:
    assert "<script" not in page.lower()
    # Every tag is one the writer emits, and no tag carries an event-handler attribute.
    tags = {tag.lstrip("/") for tag in re.findall(r"<([!/]?[a-zA-Z][a-zA-Z0-9]*)", page)}
    assert tags <= PAGE_TAGS, tags - PAGE_TAGS
    assert not re.search(r"<[^>]*\son\w+\s*=", page)
    for char in chars:  # never raw; shown as its marker
        assert char not in page, repr(char)
        assert f"\u27e8U+{ord(char):04X}\u27e9" in page, repr(char)


def test_html_view_neutralises_markup_attributes_bidi_and_control_characters_in_every_field():
    pieces = [HOSTILE[i : i + 7] for i in range(0, len(HOSTILE), 7)]
    tokens = [TokenView(piece, 0.5 - (i % 3) * 0.5, 1.0, 0.5, i % 2 == 0) for i, piece in enumerate(pieces)]
    view = SampleView(0, "id\u202e<script>", HOSTILE, tokens, tail=HOSTILE, provenance="src\u2066<b onerror=x>")
    page = render_html([view], scale=1.0, title="t\u202e<script>", summary={"note\u202e": "<img onerror=1>"})
    assert_neutralised(page, HOSTILE_CHARS)
    # The response, tags dropped and unescaped, reads as the original with markers in place of the characters.
    response = page[page.index("<div class='response'>") :]
    response = response[: response.index("<span class='context'>")]
    shown = html.unescape(re.sub(r"<[^>]+>", "", response))
    assert shown == visible(HOSTILE)
    assert shown.endswith(" nice \u27e8U+202E\u27e9elif.exe\u27e8U+202C\u27e9\n\tdone")  # newline and tab kept
    assert "<span class='cc' title='RIGHT-TO-LEFT OVERRIDE'>\u27e8U+202E\u27e9</span>" in page
    # The terminal rendering shows the same markers and no raw bidi or control character (its own colours aside).
    for text in (render_terminal(view, scale=1.0, color=False), render_terminal(view, scale=1.0)):
        own_codes_removed = re.sub(r"\x1b\[[0-9;]*m", "", text)
        assert not any(char in own_codes_removed for char in HOSTILE_CHARS)
        assert text.startswith("#0 id\u27e8U+202E\u27e9<script> (src\u27e8U+2066\u27e9<b onerror=x>)")


def test_token_view_page_from_a_hostile_dataset(tokenizer, tmp_path):
    chat = [{"role": "user", "content": "q " + HOSTILE}, {"role": "assistant", "content": HOSTILE}]
    benign = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    records = [Record("id\u202e<script>", chat, "src\u2066<b onerror=x>", True), Record("ok", benign, "o")]
    dataset = tokenize_records(records, tokenizer, max_length=1024)
    positions = [response_positions(labels) for labels in dataset["labels"]]
    offsets = np.concatenate([[0], np.cumsum([p.size for p in positions])])
    score = np.linspace(-1, 1, int(offsets[-1])).astype(np.float32)
    scores = TokenScores(offsets, np.concatenate(positions), score, np.zeros_like(score), "fp", "digest")
    selection = select_tokens(scores, "global", rho=0.3)
    page = write_token_view(tmp_path / "v.html", dataset, scores, selection, tokenizer, n_samples=2).read_text("utf-8")
    # The tokenizer itself drops a few C0 characters (\x04, \x06, ...); every character it keeps is neutralised.
    span = positions[0]
    decoded = tokenizer.decode(dataset[0]["input_ids"][span[0] : span[-1] + 1]).removesuffix("<|im_end|>")
    kept = [char for char in HOSTILE_CHARS if char in decoded]
    assert len(kept) > len(HOSTILE_CHARS) - 8 and "\u202e" in kept and "\x1b" in kept
    assert_neutralised(page, kept)
    (sample,) = [part for part in page.split("<div class='sample'>") if "#0 &middot; id<span class='cc'" in part]
    response = sample[sample.index("<div class='response'>") :]
    response = response[: response.index("&lt;|im_end|&gt;")]
    # \u25af marks a token that ends inside a multi-byte character (the next token carries the character).
    assert html.unescape(re.sub(r"<[^>]+>", "", response)).replace("\u25af", "") == visible(decoded)
