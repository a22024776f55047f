"""Token layout of PACT's two views, and the reference cache's storage contract."""

from __future__ import annotations

import pytest
import torch

from tokensafe.collator import TokenCollator
from tokensafe.data.tokenize import IGNORE_INDEX
from tokensafe.pact.layout import answer_layout, post_header_ids, post_header_text, post_view
from tokensafe.pact.reference import (
    CacheMismatchError,
    ReferenceCache,
    build_reference_cache,
    tokens_fingerprint,
)

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def batch_of(tokenizer, dataset):
    return TokenCollator(tokenizer.pad_token_id, per_token_columns=())([dataset[i] for i in range(len(dataset))])


def test_header_keeps_the_template_system_turn_or_drops_it(tokenizer):
    assert post_header_text(tokenizer, "keep") == SYSTEM + "<|im_start|>assistant\n"
    assert post_header_text(tokenizer, "drop") == "<|im_start|>assistant\n"
    assert tokenizer.decode(post_header_ids(tokenizer, "keep")) == SYSTEM + "<|im_start|>assistant\n"
    assert len(post_header_ids(tokenizer, "drop")) == 4  # <|im_start|> ass istant \n


def test_answer_layout_positions_and_offsets(tokenizer, chat_dataset):
    batch = batch_of(tokenizer, chat_dataset)
    layout = answer_layout(batch["labels"])
    labels = batch["labels"]
    # every answer position is a labelled token, predicted by the logit just before it, in nonzero order
    assert torch.all(labels[layout.batch_index, layout.logit_index + 1] != IGNORE_INDEX)
    assert len(layout) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert layout.counts(len(chat_dataset)).tolist() == [int((row[1:] != -100).sum()) for row in labels]
    # offsets restart at 0 in every assistant turn: the multi-turn chat (row 3) has two turns
    row3 = layout.offset[layout.batch_index == 3].tolist()
    assert row3.count(0) == 2 and row3[0] == 0 and row3 == sorted(row3[: row3.index(0, 1)]) + row3[row3.index(0, 1) :]
    first_turn = row3[: row3.index(0, 1)]
    assert first_turn == list(range(len(first_turn)))


def test_post_view_is_the_chat_without_its_user_turn(tokenizer, chat_dataset):
    batch = batch_of(tokenizer, chat_dataset)
    for mode, prefix in (("keep", SYSTEM + "<|im_start|>assistant\n"), ("drop", "<|im_start|>assistant\n")):
        header = post_header_ids(tokenizer, mode)
        view = post_view(batch["input_ids"], batch["labels"], header, tokenizer.pad_token_id)
        assert view.input_ids.size(0) == 5  # 3 single-turn chats + 2 turns of the multi-turn chat
        texts = [
            tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(view.input_ids, view.attention_mask, strict=True)
        ]
        assert texts[0] == prefix + "I can't help with that."  # the response; its <|im_end|> predicts nothing
        assert texts[1] == prefix + "positive"
        assert texts[3] == prefix + "Hello! How can I help?"
        assert texts[4] == prefix + "No, sorry."  # the second turn sees neither user turn nor the first answer
        # the logit at logit_index predicts the answer token: the next token of the post sequence is that token
        layout = answer_layout(batch["labels"])
        targets = batch["labels"][layout.batch_index, layout.logit_index + 1]
        lengths = view.attention_mask.sum(1)
        inside = view.logit_index + 1 < lengths[view.sequence_index]
        predicted = view.input_ids[view.sequence_index, (view.logit_index + 1).clamp(max=view.input_ids.size(1) - 1)]
        assert torch.equal(predicted[inside], targets[inside])
        assert int((~inside).sum()) == 5  # exactly the last token (<|im_end|>) of each turn lies beyond


def test_full_sequence_ends_with_the_same_assistant_header_tokens(tokenizer, chat_dataset):
    drop = post_header_ids(tokenizer, "drop")
    for ids, labels in zip(chat_dataset["input_ids"], chat_dataset["labels"], strict=True):
        starts = [t for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX and labels[t - 1] == IGNORE_INDEX]
        for s in starts:
            assert ids[s - len(drop) : s] == drop


def test_cache_round_trip_and_fingerprint_check(tmp_path, student, tokenizer, chat_dataset, safety_ids):
    fingerprint = tokens_fingerprint(chat_dataset, tokenizer)
    cache = build_reference_cache(
        student,
        chat_dataset,
        safety_ids,
        header_ids=post_header_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        fingerprint=fingerprint,
        batch_size=3,
        disable_adapter=True,
        dtype=torch.float16,
    )
    n_positions = sum(int((torch.tensor(labels[1:]) != IGNORE_INDEX).sum()) for labels in chat_dataset["labels"])
    assert cache.full.shape == (n_positions, len(safety_ids)) and cache.post.shape == cache.full.shape
    assert cache.full.dtype == torch.float16 and cache.offsets[-1] == n_positions
    cache.save(tmp_path / "c")
    loaded = ReferenceCache.load(tmp_path / "c", fingerprint)
    assert torch.equal(loaded.full, cache.full) and torch.equal(loaded.post, cache.post)
    assert torch.equal(loaded.offsets, cache.offsets) and loaded.header_ids == cache.header_ids
    assert loaded.meta["tokens_fingerprint"] == fingerprint
    with pytest.raises(CacheMismatchError, match="tokenisation"):
        ReferenceCache.load(tmp_path / "c", "another-fingerprint")
    with pytest.raises(CacheMismatchError, match="safety-token set"):
        loaded.check(fingerprint, safety_ids.flip(0))
    # rows: batch rows (2, 0) read their own slices, in order
    counts = (cache.offsets[1:] - cache.offsets[:-1])[[2, 0]]
    rows = cache.rows_for(torch.tensor([2, 0]), counts)
    expected = list(range(cache.offsets[2], cache.offsets[3])) + list(range(cache.offsets[0], cache.offsets[1]))
    assert rows.tolist() == expected


def test_tokens_fingerprint_changes_with_any_label(tokenizer, chat_dataset):
    before = tokens_fingerprint(chat_dataset, tokenizer)
    changed = chat_dataset.map(
        lambda row, i: {"labels": row["labels"][:-2] + [IGNORE_INDEX] * 2 if i == 1 else row["labels"]},
        with_indices=True,
    )
    assert tokens_fingerprint(changed, tokenizer) != before


def test_cache_matches_an_unbatched_reference_pass(student, frozen_base, tokenizer, chat_dataset, safety_ids):
    cache = build_reference_cache(
        frozen_base,
        chat_dataset,
        safety_ids,
        header_ids=None,
        pad_token_id=tokenizer.pad_token_id,
        fingerprint="x",
        batch_size=2,
    )
    assert cache.post is None
    for i in range(len(chat_dataset)):
        ids, labels = chat_dataset[i]["input_ids"], chat_dataset[i]["labels"]
        with torch.no_grad():
            logits = frozen_base(input_ids=torch.tensor([ids])).logits[0]
        positions = [t - 1 for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX]
        expected = logits[positions][:, safety_ids]
        got = cache.full[cache.offsets[i] : cache.offsets[i + 1]]
        assert torch.allclose(got, expected, atol=1e-5)


def test_fast_reference_matches_the_plain_forward_and_falls_back_for_scaled_heads(tokenizer, chat_dataset):
    from tokensafe.pact.reference import _HEAD_OK, _PREFIX_OK, _shared_prefix_length, reference_logits
    from tokensafe.testing import tiny_llama

    batch = batch_of(tokenizer, chat_dataset)
    S = torch.arange(50, 90)
    header = post_header_ids(tokenizer)

    def both(model):
        kwargs = dict(header_ids=header, pad_token_id=tokenizer.pad_token_id)
        args = (batch["input_ids"], batch["attention_mask"], batch["labels"], S)
        slow = reference_logits(model, *args, fast=False, **kwargs)
        first = reference_logits(model, *args, **kwargs)  # verifies the head once
        fast = reference_logits(model, *args, **kwargs)
        return slow, first, fast

    model = tiny_llama(tokenizer)
    slow, first, fast = both(model)
    assert getattr(model, _HEAD_OK) is True and getattr(model, _PREFIX_OK) is True
    assert _shared_prefix_length(batch["input_ids"], batch["attention_mask"], torch.tensor([40])) == 24  # system+user
    for a, b, c in zip(slow, first, fast, strict=True):
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)

    class SoftCapped(type(model)):  # logits != head(hidden): the restricted head must not be used
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = 3.0 * torch.tanh(out.logits / 3.0)
            return out

    capped = tiny_llama(tokenizer)
    capped.__class__ = SoftCapped
    slow, first, fast = both(capped)
    assert getattr(capped, _HEAD_OK) is False
    # Without the restricted head the logits are the capped ones (the shared prefix may still be used, so equal up
    # to float rounding, which depends on the CPU's kernels for the different matmul shapes).
    for a, c in zip(slow, fast, strict=True):
        assert torch.allclose(a, c, atol=1e-5)
        assert a.abs().max() <= 3.0
