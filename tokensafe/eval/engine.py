"""A greedy decode loop of the project's own: preallocated key/value slots and continuous batching.

``model.generate`` spends most of a CPU's time outside the matmuls that a decode step needs: its dynamic cache
grows by concatenation (every layer's keys and values are copied at every step), and a finished row keeps
computing until the longest row of its batch ends. :class:`GreedyEngine` instead keeps

- one preallocated key and one value tensor per layer, shape (width, kv_heads, max_len, head_dim): a step writes
  one column per row in place and attention reads the first ``W`` columns (``W`` = longest active row) as a view;
- a batch that stays full: rows are *slots*; a row that ends (EOS, ``max_new_tokens``, or an opt-in early-stop
  test) leaves at once and the next waiting prompt, longest first, is prefilled into its slot. Once nothing
  waits, the last active row moves into the hole so that active rows stay the slots ``0..n-1`` and a step costs
  ``n`` rows, never ``width``.

Prompts are laid out from column 0 of their slot (right padding), so a row's positions are 0, 1, ... exactly as
with the left padding plus attention-mask positions of ``generate``; columns past a row's length hold stale
values that a 4-D additive mask hides. A prompt of ``P`` tokens is prefilled up to its token ``P - 2``; its last
token enters the batch as that row's first decode input, so prefill never needs per-row logits.

The model is called through its own ``forward`` with an object that has the ``update(key, value, layer_idx)``
method transformers' attention layers call on a cache (every decoder in transformers 5 uses it), explicit
``position_ids`` and a ready 4-D mask (returned unchanged by transformers' mask builder). Supported: decoders with
full attention in every layer (Llama, Qwen2/3, Mistral without a sliding window, ...) under the ``sdpa`` or
``eager`` attention implementation; :func:`engine_supports` says whether a model qualifies.

Answers are greedy and equal to ``generate``'s up to floating-point reassociation: a different batch composition
changes the matmul shapes and therefore the summation order, which in rare near-ties flips an argmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokensafe.kv_cache import cache_argument

SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class Request:
    """One prompt to answer: ``tokens`` (the chat-templated prompt ids), its token budget and optional early stop.

    ``early_stop(text)`` is called with the decoded answer so far (special tokens skipped, stripped) after every
    new token; returning True ends the row with reason "early". ``key`` is any caller's handle (echoed back).
    """

    key: object
    tokens: Sequence[int]
    max_new_tokens: int
    early_stop: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class Answer:
    """A finished row: decoded text, new tokens (EOS included), and why it stopped ("eos" | "length" | "early")."""

    key: object
    text: str
    new_tokens: int
    stopped: str
    token_ids: tuple[int, ...]  # generated ids, EOS included when it ended the row

    def as_tuple(self) -> tuple[str, int, str]:
        """``(text, new_tokens, stopped)``: the shape ``generate_batch`` returns per prompt."""
        return self.text, self.new_tokens, self.stopped


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The causal-LM module to call: a PEFT wrapper's base model (its LoRA layers are injected there in place)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def engine_supports(model: torch.nn.Module) -> bool:
    """Whether :class:`GreedyEngine` can drive ``model``: every layer attends to the full past under sdpa/eager."""
    config = getattr(decoder_of(model), "config", None)
    if config is None:
        return False
    if getattr(config, "_attn_implementation", "eager") not in SUPPORTED_ATTENTION:
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        return False
    if layer_types is None and getattr(config, "use_sliding_window", False):
        return False
    return getattr(config, "is_encoder_decoder", False) is False


def stop_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an answer: the generation config's ``eos_token_id`` (int or list), else the tokenizer's.

    The same rule as ``generate_batch`` (for SmolLM2-Instruct both name ``<|im_end|>``).
    """
    configured = getattr(getattr(decoder_of(model), "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if i is not None] or [tokenizer.eos_token_id]
    return [int(i) for i in ids if i is not None]


class SlotCache:
    """Per-layer key/value slots written in place; handed to the model as its cache for one call at a time.

    ``keys[l]`` / ``values[l]``: (width, kv_heads, max_len, head_dim). Before each model call the engine says where
    that call's new keys go: :meth:`for_prefill` (whole prompts into given slots, columns ``0..Q-1``) or
    :meth:`for_decode` (one column per active row ``0..n-1``, at that row's position). ``update`` is what every
    attention layer calls with its new (B, kv_heads, q, head_dim) keys and values; it returns what the layer attends
    to.
    """

    def __init__(
        self, layers: int, width: int, kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device
    ) -> None:
        shape = (width, kv_heads, max_len, head_dim)
        # Zeros, not empty: masked columns still enter the attention matmul, and 0 * NaN from uninitialised memory
        # would poison a row even with zero weight.
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_len = max_len
        self._slots: torch.Tensor | None = None
        self._rows = 0
        self._positions: torch.Tensor | None = None
        self._arange: torch.Tensor | None = None
        self._width = 0

    def for_prefill(self, slots: torch.Tensor) -> None:
        """The next call prefills one prompt per entry of ``slots`` (long, (k,)) from column 0."""
        self._slots, self._positions = slots, None

    def for_decode(self, rows: int, positions: torch.Tensor, width: int) -> None:
        """The next call decodes rows ``0..rows-1``, row i writing column ``positions[i]``; attention sees ``width``
        columns."""
        self._slots, self._rows, self._positions, self._width = None, rows, positions, width
        self._arange = torch.arange(rows, device=positions.device)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self._positions is None:
            # Prefill: a prompt attends only to itself, so the fresh states are exactly what attention needs.
            assert self._slots is not None
            length = key_states.shape[2]
            keys[self._slots, :, :length] = key_states
            values[self._slots, :, :length] = value_states
            return key_states, value_states
        # Decode: (n, kv, 1, d) -> one column per row; advanced indices on dims 0 and 2 address (n, kv, d).
        keys[self._arange, :, self._positions] = key_states[:, :, 0]
        values[self._arange, :, self._positions] = value_states[:, :, 0]
        return keys[: self._rows, :, : self._width], values[: self._rows, :, : self._width]

    def move(self, source: int, target: int, columns: int) -> None:
        """Copy slot ``source``'s first ``columns`` columns into slot ``target`` (compaction after a row ends)."""
        for keys, values in zip(self.keys, self.values, strict=True):
            keys[target, :, :columns] = keys[source, :, :columns]
            values[target, :, :columns] = values[source, :, :columns]

    # Read by transformers' mask and generation utilities on some code paths; a ready 4-D mask skips them, these
    # keep the object harmless if a model asks anyway.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    is_compileable = False


class GreedyEngine:
    """Greedy answers for a stream of prompts with a full batch of ``width`` rows (see the module docstring).

    ``prefill_tokens`` caps the padded tokens of one prefill call (rows x longest prompt): it bounds the activation
    memory of admitting many long prompts at once.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        width: int = 32,
        prefill_tokens: int = 4096,
        stop_ids: Sequence[int] | None = None,
    ) -> None:
        if width < 1 or prefill_tokens < 1:
            raise ValueError(f"width and prefill_tokens must be >= 1, got {width}, {prefill_tokens}")
        if not engine_supports(model):
            raise ValueError(
                f"GreedyEngine supports decoders with full attention under {SUPPORTED_ATTENTION}; "
                "use generate_batch for this model"
            )
        self.model = decoder_of(model)
        self.tokenizer = tokenizer
        self.width = width
        self.prefill_tokens = prefill_tokens
        self.stop_ids = frozenset(stop_ids if stop_ids is not None else stop_token_ids(model, tokenizer))
        config = self.model.config
        self._layers = config.num_hidden_layers
        self._kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self._head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self._param = next(self.model.parameters())

    # -----------------------------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request]) -> list[Answer]:
        """Answers in request order (:meth:`stream` yields them in the order they finish)."""
        indexed = [Request(i, r.tokens, r.max_new_tokens, r.early_stop) for i, r in enumerate(requests)]
        by_index = {answer.key: answer for answer in self.stream(indexed)}
        return [
            Answer(request.key, a.text, a.new_tokens, a.stopped, a.token_ids)
            for request, a in zip(requests, (by_index[i] for i in range(len(requests))), strict=True)
        ]

    def stream(self, requests: Sequence[Request]) -> Iterator[Answer]:
        """Answer ``requests``, yielding each answer as soon as its row ends (see :meth:`steps`)."""
        for finished in self.steps(requests):
            yield from finished

    def steps(self, requests: Sequence[Request]) -> Iterator[list[Answer]]:
        """Answer ``requests``, yielding after every decode step the answers whose rows ended in it (often none).

        Admission is longest prompt first (ties: request order): similar lengths prefill together with little
        padding, and the memory peak shows at the start.
        """
        for request in requests:
            if len(request.tokens) < 1:
                raise ValueError(f"request {request.key!r} has an empty prompt")
            if request.max_new_tokens < 1:
                raise ValueError(f"request {request.key!r}: max_new_tokens must be >= 1")
        if not requests:
            return
        waiting = sorted(range(len(requests)), key=lambda i: (len(requests[i].tokens), -i))  # pop() = longest
        # A row needs columns 0 .. P + T - 2: the last generated token is never fed back.
        max_len = max(len(r.tokens) + r.max_new_tokens - 1 for r in requests)
        width = min(self.width, len(requests))
        device, dtype = self._param.device, self._param.dtype
        cache = SlotCache(self._layers, width, self._kv_heads, max_len, self._head_dim, dtype, device)
        cache_kwargs = cache_argument(self.model, cache)
        rows: list[_Row] = []  # active rows; rows[i] lives in slot i
        positions = torch.zeros(width, dtype=torch.long, device=device)  # column of each slot's next input
        inputs = torch.zeros(width, dtype=torch.long, device=device)  # each slot's next input token
        columns = torch.arange(max_len, device=device)
        was_training = self.model.training
        self.model.eval()
        try:
            while True:
                finished: list[Answer] = []
                with torch.inference_mode():
                    # Refill: waiting prompts go straight into the slots of ended rows and the free slots above
                    # (no copy); only when none wait are the last rows moved down into the remaining holes, so the
                    # active rows are always slots 0..n-1 and a step computes n rows.
                    holes = [slot for slot, row in enumerate(rows) if row.stopped is not None]
                    holes += range(len(rows), width)
                    admitted = [waiting.pop() for _ in holes[: len(waiting)]]
                    if admitted:
                        slots = holes[: len(admitted)]
                        self._admit(cache, cache_kwargs, requests, admitted, slots, positions, inputs)
                        for slot, index in zip(slots, admitted, strict=True):
                            if slot < len(rows):
                                rows[slot] = _Row(index)
                            else:  # the free slots above the active ones come in ascending order
                                rows.append(_Row(index))
                    self._compact(cache, rows, positions, inputs)
                    n = len(rows)
                    if n == 0:
                        break
                    active_positions = positions[:n]
                    span = int(active_positions.max()) + 1
                    hidden = columns[:span].unsqueeze(0) > active_positions.unsqueeze(1)  # (n, span)
                    mask = torch.zeros((n, span), dtype=dtype, device=device).masked_fill_(hidden, _min(dtype))
                    cache.for_decode(n, active_positions, span)
                    logits = self.model(
                        input_ids=inputs[:n].view(n, 1),
                        attention_mask=mask.view(n, 1, 1, span),
                        position_ids=active_positions.view(n, 1),
                        use_cache=True,
                        logits_to_keep=1,
                        **cache_kwargs,
                    ).logits
                    tokens = logits[:, -1].argmax(dim=-1)
                    inputs[:n] = tokens
                    positions[:n] += 1
                    for slot, token in enumerate(tokens.tolist()):
                        row = rows[slot]
                        request = requests[row.index]
                        row.ids.append(token)
                        if token in self.stop_ids:
                            row.stopped = "eos"
                        elif request.early_stop is not None and request.early_stop(self._decode(row.ids)):
                            row.stopped = "early"
                        elif len(row.ids) >= request.max_new_tokens:
                            row.stopped = "length"
                        if row.stopped is not None:
                            finished.append(self._answer(request, row.ids, row.stopped))
                # Outside inference mode: the caller's code between steps must not run under it.
                yield finished
        finally:
            self.model.train(was_training)

    # -----------------------------------------------------------------------------------------------------------

    def _decode(self, ids: list[int]) -> str:
        kept = ids[:-1] if ids and ids[-1] in self.stop_ids else ids
        return self.tokenizer.decode(kept, skip_special_tokens=True).strip()

    def _answer(self, request: Request, ids: list[int], reason: str) -> Answer:
        return Answer(request.key, self._decode(ids), len(ids), reason, tuple(ids))

    def _admit(
        self,
        cache: SlotCache,
        cache_kwargs: dict[str, object],
        requests: Sequence[Request],
        admitted: list[int],
        slots: list[int],
        positions: torch.Tensor,
        inputs: torch.Tensor,
    ) -> None:
        """Prefill the admitted prompts (all but their last token) into ``slots``; set each slot's next input."""
        device, dtype = positions.device, self._param.dtype
        for slot, index in zip(slots, admitted, strict=True):
            tokens = requests[index].tokens
            positions[slot] = len(tokens) - 1
            inputs[slot] = int(tokens[-1])
        # Prompts of one token have nothing to prefill. Admission is longest first, so a group's first row is its
        # longest and groups are cut where rows x longest would pass prefill_tokens.
        pending = [(slot, list(requests[i].tokens[:-1])) for slot, i in zip(slots, admitted, strict=True)]
        pending = sorted(((slot, ids) for slot, ids in pending if ids), key=lambda item: -len(item[1]))
        start = 0
        while start < len(pending):
            longest = len(pending[start][1])
            count = max(1, min(len(pending) - start, self.prefill_tokens // longest))
            group = pending[start : start + count]
            start += count
            lengths = torch.tensor([len(ids) for _, ids in group], device=device)
            input_ids = torch.zeros((len(group), longest), dtype=torch.long, device=device)
            for row, (_, ids) in enumerate(group):
                input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            # (k, Q, Q): query q sees keys <= q of its own prompt, padded keys hidden. A padded query row still sees
            # its real prefix, so no softmax row is empty (its output is never used).
            index = torch.arange(longest, device=device)
            visible = (index[None, :] <= index[:, None])[None] & (index[None, None, :] < lengths[:, None, None])
            mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, _min(dtype))
            cache.for_prefill(torch.tensor([slot for slot, _ in group], dtype=torch.long, device=device))
            self.model(
                input_ids=input_ids,
                attention_mask=mask[:, None],
                position_ids=index[None, :].expand(len(group), -1),
                use_cache=True,
                logits_to_keep=1,
                **cache_kwargs,
            )

    @staticmethod
    def _compact(cache: SlotCache, rows: list[_Row], positions: torch.Tensor, inputs: torch.Tensor) -> None:
        """Move the last active rows into the slots of ended rows until the active rows are slots ``0..n-1``
        (at most one row moves per ended row)."""

        def drop_ended_tail() -> None:
            while rows and rows[-1].stopped is not None:
                rows.pop()

        drop_ended_tail()
        hole = 0
        while hole < len(rows):
            if rows[hole].stopped is not None:  # rows[-1] is active, so it lies above the hole
                last = len(rows) - 1
                cache.move(last, hole, int(positions[last]))  # the columns it has written so far
                positions[hole] = positions[last]
                inputs[hole] = inputs[last]
                rows[hole] = rows.pop()
                drop_ended_tail()
            hole += 1


@dataclass
class _Row:
    """An active row: the index of its request, its generated ids, and why it ended (None while running)."""

    index: int
    ids: list[int] = field(default_factory=list)
    stopped: str | None = None


def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Mapping[Hashable, Sequence[int]],
    max_new_tokens: int,
    *,
    width: int = 32,
) -> Iterator[tuple[Hashable, tuple[str, int, str]]]:
    """``(key, (text, new_tokens, stopped))`` for each tokenised prompt, in the order they finish.

    The engine where it supports ``model``, else fixed length-sorted batches of ``width`` through
    ``generate_batch``; either way the answers equal ``generate_batch``'s up to near-tie argmax flips.
    """
    keys = list(prompts)
    if not keys:
        return
    requests = [Request(key, prompts[key], max_new_tokens) for key in keys]
    if engine_supports(model):
        for answer in GreedyEngine(model, tokenizer, width=width).stream(requests):
            yield answer.key, answer.as_tuple()
        return
    from tokensafe.eval.generate import generate_batch

    order = sorted(range(len(keys)), key=lambda i: (-len(requests[i].tokens), i))
    for start in range(0, len(order), width):
        chunk = order[start : start + width]
        outputs = generate_batch(model, tokenizer, [requests[i].tokens for i in chunk], max_new_tokens)
        for i, output in zip(chunk, outputs, strict=True):
            yield keys[i], output


def _min(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min if dtype.is_floating_point else -math.inf
