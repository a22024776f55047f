"""The one canonical tokenisation used by scoring, training and evaluation.

A chat is rendered with the model's own chat template, tokenised with ``add_special_tokens=False`` (the template
already holds every special token), and each token gets a label only when it belongs to an assistant turn. The
label of a token is the token itself (HF convention: the loss shifts by one), so the *first* response token is
labelled — the official TOSS code loses it to an off-by-one.

Assistant spans are found by rendering prefixes of the chat: for assistant turn k, ``render(messages[:k],
add_generation_prompt=True)`` ends exactly where the response starts, and ``render(messages[:k+1])`` contains the
response followed by the end-of-turn token. Spans are character ranges mapped to tokens through offset mappings,
so no template-specific marker strings are hard-coded. A token is labelled when it *starts* inside a span: when a
response begins with whitespace that the tokenizer merges with the template's header newline (``"\n "`` for a
response starting with a space), that one token belongs to the prompt and the merged whitespace is not labelled.

Message content must not contain the tokenizer's special-token strings (``<|im_end|>``, ``<|im_start|>``, ...).
The tokenizer encodes such text as the control token itself, so a user turn could forge a whole assistant turn
and an assistant turn would teach the model to end its answer early. The template's own markers must stay special,
so the text cannot simply be tokenised with ``split_special_tokens``; such content is refused with a DataError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from tokensafe.data.errors import DataError
from tokensafe.data.records import Message

IGNORE_INDEX = -100


@dataclass
class TokenizedChat:
    """One tokenised chat. ``input_ids``/``labels`` have the same length L; labels are IGNORE_INDEX off-response."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    response_spans: list[tuple[int, int]] = field(default_factory=list)  # token [start, end) per assistant turn


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[Message], add_generation_prompt: bool) -> str:
    """The chat template's text for ``messages`` (no tokenisation)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message]
) -> tuple[str, list[tuple[int, int]]]:
    """Render the whole chat and return (text, [start, end) character spans of each assistant turn).

    A span covers the response content and the end-of-turn token that follows it (the model must learn to stop),
    but not the whitespace the template puts after that token.
    """
    full_text = render_chat(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    end_token = tokenizer.eos_token or ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render_chat(tokenizer, messages[:k], add_generation_prompt=True)
        through = render_chat(tokenizer, messages[: k + 1], add_generation_prompt=False)
        if not full_text.startswith(prefix) or not full_text.startswith(through):
            raise ValueError(
                "the chat template does not render prefixes of a chat as prefixes of its text; "
                "assistant-only labels cannot be derived for this template"
            )
        start = len(prefix)
        tail = through[start:]
        content_at = tail.find(message["content"])
        if content_at < 0:
            raise ValueError("the chat template altered the assistant content; cannot locate the response span")
        end = start + content_at + len(message["content"])
        after = tail[content_at + len(message["content"]) :]
        # Include the end-of-turn marker when the template puts it straight after the content.
        if end_token and after.lstrip(" ").startswith(end_token):
            end += after.index(end_token) + len(end_token)
        spans.append((start, end))
    return full_text, spans


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    max_length: int | None = None,
) -> TokenizedChat:
    """Tokenise one chat with assistant-only labels, truncating from the right to ``max_length`` tokens.

    Raises:
        DataError: a message's content holds a special-token string of the tokenizer (see the module docstring).
    """
    check_special_tokens(tokenizer, messages)
    text, char_spans = assistant_char_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoded["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in encoded["offset_mapping"]]
    labels = [IGNORE_INDEX] * len(input_ids)
    token_spans: list[tuple[int, int]] = []
    for char_start, char_end in char_spans:
        # A token belongs to the response when it starts inside the span. Zero-width tokens (none in BPE
        # tokenizers with offsets) are ignored.
        inside = [i for i, (s, e) in enumerate(offsets) if char_start <= s < char_end and e > s]
        if not inside:
            continue
        for i in inside:
            labels[i] = input_ids[i]
        token_spans.append((inside[0], inside[-1] + 1))
    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        token_spans = [(s, min(e, max_length)) for s, e in token_spans if s < max_length]
    return TokenizedChat(input_ids=input_ids, labels=labels, truncated=truncated, response_spans=token_spans)


@lru_cache(maxsize=16)
def _special_pattern(specials: tuple[str, ...]) -> re.Pattern[str] | None:
    # Longest first, so the error names '<|im_end|>' rather than a shorter special token it contains.
    ordered = sorted(specials, key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None


def special_token_strings(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """Every string the tokenizer encodes as a special (control) token: named special tokens and special added ones."""
    specials = set(tokenizer.all_special_tokens)
    specials.update(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special)
    return tuple(sorted(s for s in specials if s))


def check_special_tokens(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], *, file: str | None = None, row: int | None = None
) -> None:
    """Refuse content that holds a special-token string: it would be encoded as the control token itself."""
    pattern = _special_pattern(special_token_strings(tokenizer))
    if pattern is None:
        return
    for k, message in enumerate(messages):
        found = pattern.search(message["content"])
        if found:
            raise DataError(
                f"content contains {found.group()!r}, a special token of the tokenizer; as text it would be encoded "
                "as that control token (a forged chat-template marker or an early end of turn)",
                file=file,
                row=row,
                field=f"messages[{k}].content",
                hint="remove the string from the data or break it up (e.g. with a space after '<')",
            )


def validate_messages(
    messages: object,
    *,
    file: str | None = None,
    row: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> list[Message]:
    """Check a chat's structure; raise DataError naming file, row and field on the first problem.

    A chat is an optional first system message, then user and assistant turns alternating from a user turn (the
    structure :class:`~tokensafe.data.records.Record` documents; many chat templates refuse anything else). With
    ``tokenizer``, content holding one of its special-token strings is refused too (:func:`check_special_tokens`).
    """
    if not isinstance(messages, list) or not messages:
        raise DataError("expected a non-empty list of chat messages", file=file, row=row, field="messages")
    expected = "user"
    for k, message in enumerate(messages):
        where = f"messages[{k}]"
        if not isinstance(message, dict):
            raise DataError(
                f"a message must be an object, got {type(message).__name__}", file=file, row=row, field=where
            )
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise DataError(f"unknown role {role!r}", file=file, row=row, field=f"{where}.role")
        if not isinstance(message.get("content"), str):
            raise DataError("content must be a string", file=file, row=row, field=f"{where}.content")
        if role == "assistant" and not message["content"].strip():
            raise DataError("empty assistant response", file=file, row=row, field=f"{where}.content")
        if role == "system":
            if k != 0:
                raise DataError(
                    "a system message may only be the first message", file=file, row=row, field=f"{where}.role"
                )
            continue
        if role != expected:
            raise DataError(
                f"expected a {expected} turn, got {role}: user and assistant turns alternate, starting with a user "
                "turn (after an optional system message)",
                file=file,
                row=row,
                field=f"{where}.role",
            )
        expected = "assistant" if role == "user" else "user"
    if len(messages) == 1 and messages[0]["role"] == "system":
        raise DataError("a chat needs a user turn after its system message", file=file, row=row, field="messages")
    if tokenizer is not None:
        check_special_tokens(tokenizer, messages, file=file, row=row)  # type: ignore[arg-type]
    return messages  # type: ignore[return-value]
