"""Token-risk view: response tokens coloured by their TOSS score, dropped tokens struck through.

Two renderings of the same :class:`SampleView` objects:

* :func:`render_html`: a self-contained page (inline CSS, no scripts). Every piece of text - tokens, prompts, ids,
  sources, summary fields - goes through :func:`tokensafe.display.html_text`, because the texts come from the
  (possibly adversarial) dataset: markup is escaped, and control and invisible bidirectional / zero-width
  characters are shown as boxed ``⟨U+202E⟩`` markers instead of acting on the page.
* :func:`render_terminal`: one sample with 24-bit ANSI background colours and the ANSI strike-through attribute;
  the same characters become ``⟨U+001B⟩``-style markers (:func:`tokensafe.display.visible`), so a sample can
  neither drive the terminal nor reorder what it shows.

Colours: red = positive score (better explained by the safety-degraded reference, risky), blue = negative; the
intensity saturates at ``scale`` nats (by default the 98th percentile of |score| over the whole dataset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokensafe.atomic import write_text
from tokensafe.display import MARKER_CSS, html_text, visible
from tokensafe.toss.select import Selection
from tokensafe.toss.store import TokenScores

RISKY_RGB = (220, 38, 38)
SAFE_RGB = (37, 99, 235)


@dataclass
class TokenView:
    text: str
    score: float
    loss_u: float
    loss_d: float
    dropped: bool
    weight: float | None = None


@dataclass
class SampleView:
    index: int
    sample_id: str
    context: str
    tokens: list[TokenView] = field(default_factory=list)
    tail: str = ""
    provenance: str | None = None

    @property
    def mean_score(self) -> float:
        return float(np.mean([t.score for t in self.tokens])) if self.tokens else 0.0


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """Text of each token, decoded incrementally so multi-byte characters split over tokens come out whole.

    A token that ends inside an unfinished UTF-8 character gets "" and the next token carries the character.
    """
    pieces: list[str] = []
    emitted = ""
    for j in range(len(ids)):
        text = tokenizer.decode(ids[: j + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd"):
            text = text.rstrip("\ufffd")
        common = 0
        limit = min(len(text), len(emitted))
        while common < limit and text[common] == emitted[common]:
            common += 1
        pieces.append(text[common:])
        emitted = text
    return pieces


def build_views(
    dataset: Any,
    scores: TokenScores,
    selection: Selection | None,
    tokenizer: Any,
    indices: list[int],
    *,
    show_provenance: bool = True,
) -> list[SampleView]:
    """One :class:`SampleView` per requested sample (``dataset`` must be the one ``scores`` were computed on)."""
    views = []
    for i in indices:
        row = dataset[int(i)]
        ids = list(row["input_ids"])
        span = scores.sample(int(i))
        positions = scores.positions[span]
        first = int(positions[0]) if positions.size else len(ids)
        last = int(positions[-1]) + 1 if positions.size else len(ids)
        context = tokenizer.decode(ids[:first], skip_special_tokens=False)
        pieces = token_pieces(tokenizer, ids[first:last])
        drop = selection.drop[span] if selection is not None else np.zeros(positions.size, bool)
        weights = selection.weights[span] if selection is not None and selection.weights is not None else None
        offset = {int(p) - first: k for k, p in enumerate(positions)}
        view = SampleView(
            index=int(i),
            sample_id=str(row.get("id", i)),
            context=context,
            tail=tokenizer.decode(ids[last:], skip_special_tokens=False),
            provenance=(
                f"{row.get('source', '?')}{' harmful' if row.get('is_harmful') else ''}"
                if show_provenance and "source" in row
                else None
            ),
        )
        for j, piece in enumerate(pieces):
            k = offset.get(j)
            if k is None:  # an unlabelled token inside the response span (multi-turn chats): context
                view.tokens.append(TokenView(piece, float("nan"), float("nan"), float("nan"), False))
                continue
            t = int(span.start + k)
            view.tokens.append(
                TokenView(
                    piece,
                    float(scores.score[t]),
                    float(scores.loss_u[t]),
                    float(scores.loss_d[t]),
                    bool(drop[k]),
                    None if weights is None else float(weights[k]),
                )
            )
        views.append(view)
    return views


def default_scale(scores: TokenScores) -> float:
    return float(np.quantile(np.abs(scores.score), 0.98)) if scores.n_tokens else 1.0


def _rgb(score: float, scale: float) -> tuple[int, int, int, float]:
    """(r, g, b, alpha) for a score: alpha grows with |score| / scale up to 0.85."""
    if not np.isfinite(score):
        return (255, 255, 255, 0.0)
    r, g, b = RISKY_RGB if score > 0 else SAFE_RGB
    return r, g, b, round(0.85 * min(1.0, abs(score) / max(scale, 1e-6)), 3)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #111; }
.sample { border: 1px solid #ddd; border-radius: 6px; padding: 0.8em 1em; margin: 1em 0; }
.meta { color: #555; font-size: 0.85em; margin-bottom: 0.4em; }
.context { color: #777; font-size: 0.8em; white-space: pre-wrap; }
.response { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.7; }
.t { border-radius: 2px; }
.drop { text-decoration: line-through; text-decoration-thickness: 2px; }
.empty { color: #aaa; }
.legend span { padding: 0 0.5em; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; }
"""
_CSS += MARKER_CSS + "\n"


def token_html(token: TokenView, scale: float) -> str:
    """One token as a coloured ``<span>`` (text escaped); the tooltip names the losses only when they are known."""
    r, g, b, alpha = _rgb(token.score, scale)
    text = html_text(token.text) if token.text else '<span class="empty">\u25af</span>'
    if not np.isfinite(token.score):
        return f"<span class='t'>{text}</span>"
    title = f"score {token.score:+.3f} nats"
    if np.isfinite(token.loss_u) and np.isfinite(token.loss_d):
        title += f" | l_U {token.loss_u:.3f} | l_D {token.loss_d:.3f}"
    if token.weight is not None:
        title += f" | weight {token.weight:.3f}"
    if token.dropped:
        title += " | dropped"
    classes = "t drop" if token.dropped else "t"
    return (
        f"<span class='{classes}' style='background: rgba({r},{g},{b},{alpha})' "
        f"title='{html_text(title)}'>{text}</span>"
    )


def render_html(
    views: list[SampleView],
    *,
    scale: float,
    title: str = "TOSS token-risk view",
    summary: dict[str, Any] | None = None,
    sections: list[tuple[str, list[SampleView]]] | None = None,
) -> str:
    """A self-contained HTML page; ``sections`` (heading, views) groups samples, else one list of ``views``."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html_text(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html_text(title)}</h1>",
        "<p class='legend'>score = l_U &minus; l_D (nats): "
        f"<span style='background: rgba({SAFE_RGB[0]},{SAFE_RGB[1]},{SAFE_RGB[2]},0.6)'>safe (&lt; 0)</span>"
        f"<span style='background: rgba({RISKY_RGB[0]},{RISKY_RGB[1]},{RISKY_RGB[2]},0.6)'>risky (&gt; 0)</span>"
        f"<span class='drop'>dropped</span> colour saturates at |score| = {scale:.2f}; hover a token for details.</p>",
    ]
    if summary:
        rows = "".join(
            f"<tr><th>{html_text(str(k))}</th><td>{html_text(str(v))}</td></tr>"
            for k, v in summary.items()
            if not isinstance(v, (list, dict))
        )
        parts.append(f"<table>{rows}</table>")
    for heading, group in sections or [("", views)]:
        if heading:
            parts.append(f"<h2>{html_text(heading)}</h2>")
        for view in group:
            dropped = sum(t.dropped for t in view.tokens)
            meta = f"#{view.index} &middot; {html_text(view.sample_id)}"
            if view.provenance:
                meta += f" &middot; {html_text(view.provenance)}"
            meta += f" &middot; mean score {view.mean_score:+.3f} &middot; dropped {dropped}/{len(view.tokens)}"
            tokens = "".join(token_html(t, scale) for t in view.tokens)
            parts.append(
                f"<div class='sample'><div class='meta'>{meta}</div>"
                f"<details><summary class='meta'>context</summary><div class='context'>"
                f"{html_text(view.context)}</div></details>"
                f"<div class='response'>{tokens}<span class='context'>{html_text(view.tail)}</span>"
                "</div></div>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_terminal(view: SampleView, *, scale: float, color: bool = True, context_chars: int = 400) -> str:
    """One sample for the terminal: context (tail of it) then the response tokens coloured by score."""
    context = view.context[-context_chars:]
    header = f"#{view.index} {view.sample_id}" + (f" ({view.provenance})" if view.provenance else "")
    lines = [visible(header)]
    lines.append(visible(context))
    out = []
    for token in view.tokens:
        text = visible(token.text) or "\u25af"
        if not color:
            out.append(f"[{text}]" if token.dropped else text)
            continue
        r, g, b, alpha = _rgb(token.score, scale)
        # Blend with white so pale colours stay readable with dark text.
        bg = tuple(int(round(255 - alpha * (255 - c))) for c in (r, g, b))
        strike = "\x1b[9m" if token.dropped else ""
        out.append(f"\x1b[48;2;{bg[0]};{bg[1]};{bg[2]}m\x1b[38;2;0;0;0m{strike}{text}\x1b[0m")
    lines.append("".join(out))
    dropped = sum(t.dropped for t in view.tokens)
    lines.append(f"mean score {view.mean_score:+.3f}, dropped {dropped}/{len(view.tokens)} (struck through)")
    return "\n".join(lines)


def write_token_view(
    path: str | Path,
    dataset: Any,
    scores: TokenScores,
    selection: Selection | None,
    tokenizer: Any,
    *,
    n_samples: int = 40,
    summary: dict[str, Any] | None = None,
    show_provenance: bool = True,
) -> Path:
    """Write the page: the riskiest half of ``n_samples`` by mean token score, then the safest half."""
    counts = scores.counts
    has = np.flatnonzero(counts > 0)
    mean = np.bincount(scores.sample_ids(), weights=scores.score, minlength=scores.n_samples)[has] / counts[has]
    order = has[np.argsort(-mean, kind="stable")]
    n_top = min(len(order), (n_samples + 1) // 2)
    top = order[:n_top].tolist()
    bottom = [i for i in order[::-1][: n_samples - n_top].tolist() if i not in top][::-1]
    kwargs = dict(show_provenance=show_provenance)
    sections = [
        ("Highest mean score", build_views(dataset, scores, selection, tokenizer, top, **kwargs)),
        ("Lowest mean score", build_views(dataset, scores, selection, tokenizer, bottom, **kwargs)),
    ]
    page = render_html([], scale=default_scale(scores), summary=summary, sections=sections)
    return write_text(path, page)
