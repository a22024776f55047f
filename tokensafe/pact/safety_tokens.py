"""Safety tokens: the vocabulary entries on which alignment moved probability (docs/methods/pact.md §1).

Harmful prompts get the aligned model A's own (refusal) responses — greedy generations, or responses given with the
prompts. Each chat is teacher-forced through A and its base B (same tokenizer) with the canonical tokenisation; at
every response position d_t(v) = p_A(v | x, y<t) − p_B(v | x, y<t). Averaging over the positions of an example,
then over examples, gives D(v); the same averaging of p_A gives P(v).

S = the top-K tokens by P (what the official code does; ``select_by="prob"``) or by D (what the paper's text says;
``select_by="diff"``). Weights: D restricted to S, z-scored, divided by its L2 norm, clamped at 0 (the std cancels
in the L2 normalisation, so the z-score's std convention does not matter; only the centring does).

Not in the official code (issue 18 remedies, off by default; docs/methods/pact.md §8): ``weighting="paper"`` keeps the
positive D values as they are, w = max(D, 0) on S; ``SafetyTokensArgs.contrast_borderline = N`` subtracts the P and D
of the aligned model's answers to N borderline-but-safe prompts from the harmful ones before selecting and weighting.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokensafe.atomic import atomic_path, write_json
from tokensafe.data.records import Record
from tokensafe.data.sources import load_source
from tokensafe.data.tokenize import IGNORE_INDEX, render_chat, tokenize_chat
from tokensafe.digests import digest, tokenizer_key

SelectBy = Literal["prob", "diff"]
Weighting = Literal["official", "paper"]
JSON_FILE = "safety_tokens.json"
TENSOR_FILE = "safety_tokens.safetensors"
# Named sources that exist to *evaluate* safety: identifying safety tokens on them would leak the test set.
EVALUATION_SOURCES = frozenset(
    {"jbb_harmful", "jbb_benign", "xstest", "harmbench", "strongreject", "demo_eval_harmful", "demo_eval_benign"}
)


def token_weights(diff: torch.Tensor) -> torch.Tensor:
    """w = clamp(z / ||z||_2, min=0) with z = (d − mean) / std: (K,) -> (K,) float32.

    When every d is equal the z-score is undefined; then every token gets the same weight 1/sqrt(K).
    """
    d = diff.double()
    centred = d - d.mean()
    std = d.std() if d.numel() > 1 else torch.zeros((), dtype=d.dtype)
    if not torch.isfinite(std) or float(std) == 0.0:
        return torch.full_like(diff, 1.0 / max(1, diff.numel()) ** 0.5, dtype=torch.float32)
    z = centred / std
    return (z / z.norm()).clamp(min=0.0).float()


def paper_weights(diff: torch.Tensor) -> torch.Tensor:
    """w = max(D, 0) on S, the values as they are (not normalised): (K,) -> (K,) float32. Not the official code.

    When no D on S is positive every weight would be 0 and the weighted target undefined; then, as for the official
    weights' degenerate case, every token gets 1/sqrt(K).
    """
    w = diff.double().clamp(min=0.0)
    if not bool((w > 0).any()):
        return torch.full_like(diff, 1.0 / max(1, diff.numel()) ** 0.5, dtype=torch.float32)
    return w.float()


def weigh(diff: torch.Tensor, weighting: Weighting = "official") -> torch.Tensor:
    """The weights of S from D on S: ``official`` (:func:`token_weights`) or ``paper`` (:func:`paper_weights`)."""
    if weighting == "official":
        return token_weights(diff)
    if weighting == "paper":
        return paper_weights(diff)
    raise ValueError(f"weighting must be 'official' or 'paper', got {weighting!r}")


def select_tokens(diff: torch.Tensor, prob: torch.Tensor, k: int, select_by: SelectBy = "prob") -> torch.Tensor:
    """Top-``k`` token ids by P (``prob``) or by D (``diff``), best first: (V,), (V,) -> (k,) int64."""
    if select_by not in ("prob", "diff"):
        raise ValueError(f"select_by must be 'prob' or 'diff', got {select_by!r}")
    scores = prob if select_by == "prob" else diff
    return torch.topk(scores.double(), k=min(k, scores.numel())).indices


@dataclass
class SafetyTokens:
    """The safety-token set S with its scores and weights (vocab-sized D and P kept for re-selection)."""

    token_ids: list[int]
    tokens: list[str]  # raw vocabulary entries (e.g. 'ĠI')
    texts: list[str]  # decoded strings (e.g. ' I')
    diff: list[float]  # D(v) on S
    prob: list[float]  # P(v) on S
    weights: list[float]
    select_by: str
    vocab_diff: torch.Tensor  # (V,)
    vocab_prob: torch.Tensor  # (V,)
    meta: dict[str, Any] = field(default_factory=dict)
    weighting: str = "official"  # how ``weights`` were made from ``diff`` (files written before it: official)

    @property
    def ids_tensor(self) -> torch.Tensor:
        return torch.as_tensor(self.token_ids, dtype=torch.long)

    @property
    def weights_tensor(self) -> torch.Tensor:
        return torch.as_tensor(self.weights, dtype=torch.float32)

    def weight_vector(self) -> torch.Tensor:
        """The sparse vocabulary-sized weight vector (0 off S)."""
        w = torch.zeros(self.vocab_diff.numel(), dtype=torch.float32)
        w[self.ids_tensor] = self.weights_tensor
        return w

    def reweighted(self, weighting: Weighting) -> SafetyTokens:
        """A copy whose weights are made from the stored D on S by ``weighting`` (S unchanged)."""
        weights = weigh(torch.as_tensor(self.diff, dtype=torch.float64), weighting)
        return dataclasses.replace(self, weights=weights.tolist(), weighting=weighting)

    def fingerprint(self) -> str:
        return digest("safety-tokens", self.token_ids, [round(w, 8) for w in self.weights])

    def table(self, n: int = 20) -> str:
        lines = [f"{'rank':>4}  {'id':>6}  {'token':<18} {'P(v)':>9} {'D(v)':>10} {'weight':>8}"]
        for rank, i in enumerate(range(min(n, len(self.token_ids))), start=1):
            lines.append(
                f"{rank:>4}  {self.token_ids[i]:>6}  {json.dumps(self.texts[i], ensure_ascii=False):<18} "
                f"{self.prob[i]:>9.5f} {self.diff[i]:>+10.5f} {self.weights[i]:>8.4f}"
            )
        return "\n".join(lines)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write both files atomically, the tensors first: the JSON file (what :meth:`load` and the cache look for)
        exists only once everything is written."""
        directory = Path(directory)
        with atomic_path(directory / TENSOR_FILE) as tmp:
            save_file(
                {
                    "token_ids": self.ids_tensor,
                    "weights": self.weights_tensor,
                    "diff": torch.as_tensor(self.diff, dtype=torch.float32),
                    "prob": torch.as_tensor(self.prob, dtype=torch.float32),
                    "vocab_diff": self.vocab_diff.float().contiguous(),
                    "vocab_prob": self.vocab_prob.float().contiguous(),
                },
                str(tmp),
                metadata={"select_by": self.select_by, "fingerprint": self.fingerprint()},
            )
        record = {k: v for k, v in asdict(self).items() if k not in ("vocab_diff", "vocab_prob")}
        record["fingerprint"] = self.fingerprint()
        write_json(directory / JSON_FILE, record, ensure_ascii=False)
        return directory

    @classmethod
    def load(cls, path: str | os.PathLike) -> SafetyTokens:
        """Load from a directory written by :meth:`save`, or from its JSON file."""
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        if not (directory / JSON_FILE).is_file():
            raise FileNotFoundError(f"no {JSON_FILE} in {directory}; run `tokensafe pact` to identify safety tokens")
        record = json.loads((directory / JSON_FILE).read_text(encoding="utf-8"))
        record.pop("fingerprint", None)
        tensors = load_file(str(directory / TENSOR_FILE)) if (directory / TENSOR_FILE).is_file() else {}
        vocab_size = int(max(record["token_ids"]) + 1)
        return cls(
            **record,
            vocab_diff=tensors.get("vocab_diff", torch.zeros(vocab_size)),
            vocab_prob=tensors.get("vocab_prob", torch.zeros(vocab_size)),
        )


def make_safety_tokens(
    tokenizer: PreTrainedTokenizerBase,
    vocab_diff: torch.Tensor,
    vocab_prob: torch.Tensor,
    k: int = 50,
    select_by: SelectBy = "prob",
    meta: dict[str, Any] | None = None,
    weighting: Weighting = "official",
) -> SafetyTokens:
    """Choose S from vocabulary-sized D and P, and weight it."""
    ids = select_tokens(vocab_diff, vocab_prob, k, select_by)
    weights = weigh(vocab_diff[ids], weighting)
    id_list = ids.tolist()
    return SafetyTokens(
        token_ids=id_list,
        tokens=[str(t) for t in tokenizer.convert_ids_to_tokens(id_list)],
        texts=[tokenizer.decode([i]) for i in id_list],
        diff=vocab_diff[ids].double().tolist(),
        prob=vocab_prob[ids].double().tolist(),
        weights=weights.tolist(),
        select_by=select_by,
        vocab_diff=vocab_diff.float(),
        vocab_prob=vocab_prob.float(),
        meta=meta or {},
        weighting=weighting,
    )


def greedy_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> list[str]:
    """The model's greedy answers to single-turn prompts, rendered with its chat template, in prompt order.

    Generated by the evaluation's engine (``batch_size`` rows wide, a finished row's slot refilled at once); an answer
    ends at the model's end-of-turn token(s) or after ``max_new_tokens``.
    """
    from tokensafe.eval.engine import greedy_answers

    encoded = {
        i: tokenizer(
            render_chat(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for i, p in enumerate(prompts)
    }
    answers: dict[int, str] = {}
    last_log = time.time()
    was_training = model.training
    model.eval()
    for i, (text, _, _) in greedy_answers(model, tokenizer, encoded, max_new_tokens, width=batch_size):
        answers[i] = text
        if time.time() - last_log > 30:
            last_log = time.time()
            print(f"pact safety tokens: generated {len(answers)}/{len(prompts)} responses", flush=True)
    model.train(was_training)
    return [answers[i] for i in range(len(prompts))]


@torch.no_grad()
def probability_statistics(
    aligned: PreTrainedModel,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chats: Sequence[list[dict[str, str]]],
    *,
    max_length: int = 512,
    batch_size: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """D(v) and P(v) over teacher-forced chats: (V,), (V,) float64 and the number of examples used.

    Per example, p_A − p_B and p_A are averaged over its response positions (the labelled tokens, including the
    first response token and the end-of-turn token); the example means are then averaged.
    """
    from tokensafe.collator import TokenCollator

    rows = []
    for messages in chats:
        tokenized = tokenize_chat(tokenizer, messages, max_length)
        if any(label != IGNORE_INDEX for label in tokenized.labels[1:]):
            rows.append({"input_ids": tokenized.input_ids, "labels": tokenized.labels})
    if not rows:
        raise ValueError("no chat has a response token to teacher-force")
    collate = TokenCollator(tokenizer.pad_token_id, per_token_columns=())
    device = next(aligned.parameters()).device
    base_device = next(base.parameters()).device
    vocab = aligned.get_output_embeddings().weight.shape[0]
    sum_diff = torch.zeros(vocab, dtype=torch.float64, device=device)
    sum_prob = torch.zeros(vocab, dtype=torch.float64, device=device)
    was = (aligned.training, base.training)
    aligned.eval()
    base.eval()
    for first in range(0, len(rows), batch_size):
        batch = collate(rows[first : first + batch_size])
        mask = batch["labels"][:, 1:] != IGNORE_INDEX  # (B, L-1): logit t predicts label t+1
        p_a = torch.softmax(
            aligned(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            .logits[:, :-1]
            .float(),
            dim=-1,
        )
        p_b = torch.softmax(
            base(input_ids=batch["input_ids"].to(base_device), attention_mask=batch["attention_mask"].to(base_device))
            .logits[:, :-1]
            .float(),
            dim=-1,
        ).to(device)
        if p_b.size(-1) != p_a.size(-1):
            raise ValueError(f"aligned and base vocabularies differ ({p_a.size(-1)} vs {p_b.size(-1)})")
        m = mask.to(device, torch.float32)
        per_example = m / m.sum(dim=1, keepdim=True)  # (B, L-1) averaging weights over each example's positions
        sum_prob += torch.einsum("bt,btv->v", per_example, p_a).double()
        sum_diff += torch.einsum("bt,btv->v", per_example, p_a - p_b).double()
        del p_a, p_b
    aligned.train(was[0])
    base.train(was[1])
    return (sum_diff / len(rows)).cpu(), (sum_prob / len(rows)).cpu(), len(rows)


@dataclass
class SafetyTokensArgs:
    """How safety tokens are identified (filled from the ``pact_*`` fields of the PACT config)."""

    prompts: str = "harmful_train"  # named source of harmful prompts: a training set, never an evaluation set
    prompts_split: str | None = None
    prompts_path: str | None = None
    n_prompts: int = 100  # seeded sample of the source (0 = all)
    responses: str = "generate"  # 'generate' (greedy answers of the aligned model) or 'given' (stored responses)
    max_new_tokens: int = 64
    top_k: int = 50
    select_by: str = "prob"  # 'prob' (official code) or 'diff' (paper text)
    weighting: str = "official"  # 'official' (z-score, L2, clamp) or 'paper' (max(D, 0)); not in the paper
    contrast_borderline: int = 0  # borderline-but-safe prompts whose answers' P and D are subtracted; not in the paper
    batch_size: int = 8
    max_length: int = 512
    seed: int = 0


def harmful_prompts(args: SafetyTokensArgs, data_dir: str | None = None) -> list[Record]:
    """The prompt records (seeded sample of ``n_prompts``); evaluation-only sources are refused."""
    if args.prompts in EVALUATION_SOURCES:
        raise ValueError(
            f"'{args.prompts}' is an evaluation set; identifying safety tokens on it would leak the test prompts. "
            "Use a training set such as harmful_train or advbench."
        )
    records = load_source(args.prompts, data_dir=data_dir, split=args.prompts_split, path=args.prompts_path)
    records = [r for r in records if any(m["role"] == "user" for m in r.messages)]
    if args.n_prompts and args.n_prompts < len(records):
        generator = torch.Generator().manual_seed(args.seed)
        keep = sorted(torch.randperm(len(records), generator=generator)[: args.n_prompts].tolist())
        records = [records[i] for i in keep]
    return records


def contrast_prompts(args: SafetyTokensArgs) -> list[Record]:
    """The borderline-but-safe prompts of the contrast: a seeded sample of ``args.contrast_borderline`` of the
    project's training borderline set (``borderline_prompts.txt``; all of it when N is larger), [] when off."""
    if args.contrast_borderline <= 0:
        return []
    from tokensafe.data.prompts import borderline_records

    records = borderline_records("train")
    if args.contrast_borderline < len(records):
        generator = torch.Generator().manual_seed(args.seed)
        keep = sorted(torch.randperm(len(records), generator=generator)[: args.contrast_borderline].tolist())
        records = [records[i] for i in keep]
    return records


def _user_prompts(records: Sequence[Record]) -> list[str]:
    return [next(m["content"] for m in r.messages if m["role"] == "user") for r in records]


def contrast_statistics(
    aligned: PreTrainedModel,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Record],
    args: SafetyTokensArgs,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """D_b(v), P_b(v) (V,) float64 of the aligned model's greedy answers to the borderline ``records`` (always
    generated: the borderline set has no responses), averaged like :func:`probability_statistics`; and the count."""
    prompts = _user_prompts(records)
    responses = greedy_responses(
        aligned, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    chats = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": y}]
        for p, y in zip(prompts, responses, strict=True)
        if y.strip()
    ]
    if not chats:
        raise ValueError(f"all {len(prompts)} answers to the contrast prompts are empty; raise max_new_tokens")
    return probability_statistics(
        aligned, base, tokenizer, chats, max_length=args.max_length, batch_size=args.batch_size
    )


def identify_safety_tokens(
    aligned: PreTrainedModel,
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Record],
    args: SafetyTokensArgs,
    meta: dict[str, Any] | None = None,
    contrast: Sequence[Record] = (),
) -> tuple[SafetyTokens, list[list[dict[str, str]]]]:
    """Run the whole identification; returns S and the chats it was computed on.

    ``contrast`` (not in the paper; :func:`contrast_prompts`): borderline-but-safe prompt records. With them, S and
    its weights come from the contrasted statistics D − D_b and P − P_b (harmful minus borderline answers), and the
    returned SafetyTokens keeps those as its ``vocab_diff`` / ``vocab_prob``: tokens as frequent in the answers to
    benign-but-sensitive prompts as in the refusals lose their rank.
    """
    prompts = _user_prompts(records)
    start = time.time()
    if args.responses == "generate":
        responses = greedy_responses(
            aligned, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
        )
    elif args.responses == "given":
        responses = [r.response or "" for r in records]
    else:
        raise ValueError(f"responses must be 'generate' or 'given', got {args.responses!r}")
    generated_s = time.time() - start
    chats = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": y}]
        for p, y in zip(prompts, responses, strict=True)
        if y.strip()
    ]
    if not chats:
        raise ValueError(
            f"all {len(prompts)} responses are empty (the aligned model answered nothing printable); "
            "raise max_new_tokens or pass responses='given' with a source that holds responses"
        )
    vocab_diff, vocab_prob, n_used = probability_statistics(
        aligned, base, tokenizer, chats, max_length=args.max_length, batch_size=args.batch_size
    )
    contrast_info: dict[str, Any] = {}
    if contrast:
        contrast_diff, contrast_prob, n_contrast = contrast_statistics(aligned, base, tokenizer, contrast, args)
        vocab_diff, vocab_prob = vocab_diff - contrast_diff, vocab_prob - contrast_prob
        contrast_info = {"contrast_prompts": len(contrast), "contrast_examples": n_contrast}
    info = {
        "prompts": args.prompts,
        "prompts_split": args.prompts_split,
        "n_prompts": len(prompts),
        "n_examples": n_used,
        "responses": args.responses,
        "max_new_tokens": args.max_new_tokens,
        "top_k": args.top_k,
        "tokenizer": tokenizer_key(tokenizer),
        "generation_seconds": round(generated_s, 1),
        "total_seconds": round(time.time() - start, 1),
        **contrast_info,
        **(meta or {}),
    }
    tokens = make_safety_tokens(
        tokenizer,
        vocab_diff,
        vocab_prob,
        args.top_k,
        args.select_by,  # type: ignore[arg-type]
        info,
        weighting=args.weighting,  # type: ignore[arg-type]
    )
    return tokens, chats
