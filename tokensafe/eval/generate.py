"""Greedy generation with the model's own chat template, cached and resumable as JSONL.

One generations file holds the answers of one model (fingerprint) to one suite under one set of generation
settings; its name is a hash of exactly those, so re-running an evaluation with the same model and settings reads
the file instead of generating, and a different judge can re-score it for free. Answers come from
:class:`tokensafe.eval.engine.GreedyEngine` (one stream of prompts, possibly of several suites, with a batch kept
full); a row is appended (flush, fsync) once it and every row before it in the file's order have finished, so the
file's content does not depend on timing and a run killed half-way resumes from its last written row.

File layout (JSON lines):

- line 1, the header: ``{"header": {"suite", "model", "fingerprint", "settings": {...}, "format": 2}}``
- then one row per prompt, in admission order (longest prompt first, ties in record order):
  ``{"id", "prompt", "response", "prompt_sha", "prompt_tokens", "new_tokens", "stopped", "category", "gold"}``

``prompt`` is the last user turn (what a judge sees), ``prompt_sha`` a hash of the full chat-templated text the
model saw (a row is reused only while the templated prompt is unchanged: new data or a new chat template
regenerates it), ``stopped`` is "eos", "length" (cut at ``max_new_tokens``) or "early" (cut after the first
refusal phrase, ``stop_at_refusal``), and ``category`` / ``gold`` carry what scoring needs (benchmark category, gold
label or number) so a file can be scored without the dataset.

Format 2 (format 1: fixed batches through ``model.generate``): answers come from the engine, whose rows meet other
rows of the stream instead of a fixed batch, and the settings gained ``stop_at_refusal``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from tokensafe import distributed
from tokensafe.atomic import write_text
from tokensafe.data.records import Record
from tokensafe.digests import digest
from tokensafe.faults import maybe_kill

FORMAT_VERSION = 2
KEY_FIELDS = ("suite", "fingerprint", "settings", "format")  # header fields that must match on reuse


@dataclass(frozen=True)
class GenerationSettings:
    """Everything besides the model and the prompts that can change a generated answer.

    Decoding is always greedy in fp32 (docs/methods/evaluation.md §2). ``batch_size`` is the engine's width (rows
    decoded together) and part of the key on purpose: which rows share a step changes the matmul shapes, and in rare
    cases that flips a near-tied argmax, so a different width is a (slightly) different experiment.
    ``stop_at_refusal`` ends an answer right after its first refusal phrase (the keyword judge's list): the keyword
    verdict cannot change, but the stored answer is cut, so it is part of the key too.
    """

    max_new_tokens: int
    batch_size: int
    decoding: str = "greedy"
    dtype: str = "float32"
    stop_at_refusal: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {self}")

    def key(self) -> str:
        """Short stable hash of the settings (part of the generations file name)."""
        return digest("generation-settings", asdict(self), length=10)


@dataclass(frozen=True)
class Generation:
    """One generated answer (a row of the generations file)."""

    id: str
    prompt: str
    response: str
    prompt_sha: str
    prompt_tokens: int
    new_tokens: int
    stopped: str  # "eos" | "length"
    category: str | None = None
    gold: Any = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def generations_path(root: str | os.PathLike, suite: str, fingerprint: str, settings: GenerationSettings) -> Path:
    """Where the generations of (model fingerprint, suite, settings) live under ``root``."""
    return Path(root) / "generations" / f"{suite}-{fingerprint}-{settings.key()}.jsonl"


def render_prompt(tokenizer: PreTrainedTokenizerBase, record: Record) -> str:
    """The exact text the model continues: its own chat template with the assistant header appended."""
    return tokenizer.apply_chat_template(record.prompt_messages, add_generation_prompt=True, tokenize=False)


def _sha(text: str) -> str:
    return digest("prompt-text", text)


# ---------------------------------------------------------------------------------------------------------------
# Reading and repairing a generations file
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class GenerationsFile:
    """A parsed generations file: its header and rows by id (a later row for the same id wins)."""

    path: Path
    header: dict[str, Any]
    rows: dict[str, Generation]


def read_generations(path: str | os.PathLike) -> GenerationsFile:
    """Read a generations file; a torn last line (a run killed mid-write) is ignored.

    Raises:
        ValueError: the file has no header line or a damaged line other than the last.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    # After the split, a file ending in a newline has "" in the last slot; anything else there is a row whose write
    # was interrupted, which is dropped (its batch is regenerated).
    complete = lines[:-1]
    if not complete:
        raise ValueError(f"{path}: empty generations file (no header line)")
    try:
        header = json.loads(complete[0])["header"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: line 1 is not a generations header") from error
    rows: dict[str, Generation] = {}
    for number, line in enumerate(complete[1:], start=2):
        if not line.strip():
            continue
        try:
            row = Generation(**json.loads(line))
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a generation row ({error})") from error
        rows[row.id] = row
    return GenerationsFile(path, header, rows)


def _drop_torn_tail(path: Path) -> None:
    """Truncate ``path`` after its last newline, so appends continue from a whole line."""
    with open(path, "rb+") as handle:
        data = handle.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            handle.truncate(end)


# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an answer: the model's generation config (may be a list), else the tokenizer's EOS."""
    from tokensafe.eval.engine import stop_token_ids  # one rule for both paths

    return stop_token_ids(model, tokenizer)


def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
) -> list[tuple[str, int, str]]:
    """Greedy answers to tokenised prompts: (decoded text, new tokens up to and including EOS, "eos"|"length").

    Prompts are left-padded by hand to ``width`` = the longest prompt, giving ``input_ids`` / ``attention_mask``
    of shape (B, width); ``generate`` returns (B, width + T) with T <= max_new_tokens, and the answer is
    ``output[:, width:]`` up to the first EOS. Padding by hand rather than through ``tokenizer.pad`` leaves the
    caller's tokenizer (its ``padding_side``) untouched.
    """
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in prompts], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], dtype=torch.long)
    device = getattr(model, "device", torch.device("cpu"))
    # An explicit config, not the model's: checkpoints ship sampling defaults (temperature, top_p) that would
    # otherwise trigger warnings or, with do_sample in them, non-greedy decoding.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos
    )
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
        )
    results: list[tuple[str, int, str]] = []
    for row in output[:, width:].tolist():
        stop = next((i for i, token in enumerate(row) if token in eos), None)
        kept = row if stop is None else row[:stop]
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        results.append((text, len(row) if stop is None else stop + 1, "length" if stop is None else "eos"))
    return results


@dataclass
class SuiteJob:
    """One suite's part of a shared generation stream: the arguments :func:`generate_suite` takes for it."""

    records: Sequence[Record]
    path: Path
    settings: GenerationSettings
    header: dict[str, Any] | None = None
    gold: Callable[[Record], Any] | None = None
    category: Callable[[Record], str | None] | None = None


class _OpenSuite:
    """A job's file opened for appending: what it holds already, what is left to generate, and the in-order commit
    of finished answers (a row is written once every row before it in the file's order is written).

    ``writable=False`` (ranks other than 0 of a distributed run) reads the file and keeps the same rows in memory
    without ever writing it; the file must exist (rank 0 opened it first).
    """

    def __init__(self, job: SuiteJob, tokenizer: PreTrainedTokenizerBase, writable: bool = True) -> None:
        records = job.records
        if len({record.id for record in records}) != len(records):
            raise ValueError("record ids must be unique within a suite (they key the generations file)")
        self.job = job
        self.path = path = Path(job.path)
        header = {**(job.header or {}), "settings": asdict(job.settings), "format": FORMAT_VERSION}
        self.done: dict[str, Generation] = {}
        self.writable = writable
        if path.exists() and path.stat().st_size > 0:
            existing = read_generations(path)
            # Only the cache key must match; "model" may be spelled differently for the same weights.
            if any(existing.header.get(key) != header.get(key) for key in KEY_FIELDS):
                raise ValueError(
                    f"{path} was written for {existing.header}, not {header}; delete it or use another output "
                    "directory"
                )
            self.done = existing.rows
            if writable:
                _drop_torn_tail(path)
        elif not writable:
            raise FileNotFoundError(f"{path}: no generations file to read (rank 0 creates it)")
        else:
            # Atomic: a kill while the header is written must not leave a headerless file that every later run
            # rejects.
            write_text(path, json.dumps({"header": header}) + "\n")
        self.header = header
        texts = [render_prompt(tokenizer, record) for record in records]
        self.shas = [_sha(text) for text in texts]
        self.encoded: list[list[int]] = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        fresh = {
            i
            for i, record in enumerate(records)
            if record.id not in self.done or self.done[record.id].prompt_sha != self.shas[i]
        }
        # The file's order: longest prompt first, ties in record order (the engine admits in this order too).
        self.order = sorted(fresh, key=lambda i: (-len(self.encoded[i]), i))
        self.generated = len(fresh)
        self.finished: dict[int, tuple[str, int, str]] = {}
        self.next = 0  # position in self.order of the next row to write
        self.handle = None

    def add(self, index: int, answer: tuple[str, int, str]) -> int:
        """Record a finished answer and append every row that is now next in order (not yet synced: see
        :meth:`sync`); returns how many were written."""
        self.finished[index] = answer
        written = 0
        while self.next < len(self.order) and self.order[self.next] in self.finished:
            i = self.order[self.next]
            response, new_tokens, stopped = self.finished.pop(i)
            record, job = self.job.records[i], self.job
            row = Generation(
                id=record.id,
                prompt=record.prompt,
                response=response,
                prompt_sha=self.shas[i],
                prompt_tokens=len(self.encoded[i]),
                new_tokens=new_tokens,
                stopped=stopped,
                category=job.category(record) if job.category else None,
                gold=job.gold(record) if job.gold else None,
            )
            if self.writable:
                if self.handle is None:
                    self.handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by generate_suites
                self.handle.write(row.to_json() + "\n")
            self.done[record.id] = row
            self.next += 1
            written += 1
        return written

    def sync(self) -> None:
        """Flush and fsync the rows written so far: a kill loses only answers still waiting for an earlier row."""
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())

    def rows(self) -> list[Generation]:
        return [self.done[record.id] for record in self.job.records]


def _refusal_stop() -> Callable[[str], bool]:
    """Early-stop test of ``stop_at_refusal``: the answer so far contains a refusal phrase of the keyword judge.

    An answer stopped here keeps its keyword verdict: the phrase stays in the cut answer, and the full answer
    (which would only have continued it) contains it too, at the same place.
    """
    from tokensafe.eval.judges import KeywordJudge

    judge = KeywordJudge()
    return lambda text: judge.find_refusal(text) is not None


def _batched_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, requests: Sequence[Any], width: int
) -> Iterator[list[Any]]:
    """The engine's fallback for models it cannot drive: batches of ``width`` prompts of one budget through
    ``generate_batch``, longest first; yields each batch's answers."""
    from tokensafe.eval.engine import Answer

    order = sorted(range(len(requests)), key=lambda i: (requests[i].max_new_tokens, -len(requests[i].tokens), i))
    for start in range(0, len(order), width):
        chunk = order[start : start + width]
        for budget in sorted({requests[i].max_new_tokens for i in chunk}):
            part = [i for i in chunk if requests[i].max_new_tokens == budget]
            answers = generate_batch(model, tokenizer, [requests[i].tokens for i in part], budget)
            yield [Answer(requests[i].key, *answer, ()) for i, answer in zip(part, answers, strict=True)]


def generate_suites(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    jobs: Sequence[SuiteJob],
    *,
    progress: bool = True,
    after_batch: Callable[[int], None] | None = None,
) -> list[tuple[list[Generation], int]]:
    """Generate (or reuse) the answers of several suites in one engine stream; per job (as :func:`generate_suite`).

    Every job's file is checked and opened first; then the prompts left to answer in all files go through one
    :class:`~tokensafe.eval.engine.GreedyEngine` (width: the largest ``settings.batch_size``), longest first, each
    with its own suite's budget and early stop. ``after_batch(i)`` is called after the i-th commit (one or more rows
    appended and fsynced; tests inject an interruption there).

    Under ``torchrun`` / ``accelerate launch`` (:mod:`tokensafe.distributed`) every rank answers a round-robin share
    of that order with its own engine; the answers are gathered once all are done, rank 0 alone writes them (the
    file an uninterrupted single process writes, in the same order) and every rank returns all rows. A kill before
    the gather loses that call's new answers: rows are committed only then.
    """
    from tokensafe.eval.engine import GreedyEngine, Request, engine_supports

    if len({Path(job.path).resolve() for job in jobs}) != len(jobs):
        raise ValueError("two jobs of one generation stream write the same generations file (a suite given twice?)")
    several, main = distributed.is_distributed(), distributed.is_main()
    suites = [_OpenSuite(job, tokenizer) for job in jobs] if main else []
    distributed.barrier()  # rank 0 has written the headers and dropped torn tails: the others can read the files
    if not main:
        suites = [_OpenSuite(job, tokenizer, writable=False) for job in jobs]
    requests: list[Request] = []
    for number, suite in enumerate(suites):
        stop = _refusal_stop() if suite.job.settings.stop_at_refusal else None
        requests += [
            Request((number, i), suite.encoded[i], suite.job.settings.max_new_tokens, stop) for i in suite.order
        ]
    # One global order, longest first (ties: suite, then record order); per suite it is that suite's file order.
    requests.sort(key=lambda r: (-len(r.tokens), r.key))
    width = max((job.settings.batch_size for job in jobs), default=1)
    # This rank's share (all of them in a single process): round-robin over the longest-first order, so every rank
    # gets long and short prompts alike.
    mine = [requests[i] for i in distributed.split(len(requests))]
    gathered: list[tuple[object, tuple[str, int, str]]] = []  # this rank's answers, when there are ranks
    commits = 0
    try:
        if requests:
            model.eval()
            if engine_supports(model):
                steps = GreedyEngine(model, tokenizer, width=width).steps(mine)
            elif any(r.early_stop is not None for r in requests):
                raise ValueError("stop_at_refusal needs the generation engine, which does not support this model")
            else:
                steps = _batched_answers(model, tokenizer, mine, width)
            name = ",".join(str(s.header.get("suite", "generate")) for s in suites)
            with tqdm(total=len(mine), desc=name, unit="prompt", disable=not progress or not main) as bar:
                for finished in steps:
                    if several:
                        gathered += [(answer.key, answer.as_tuple()) for answer in finished]
                        bar.update(len(finished))
                        continue
                    touched: set[int] = set()
                    for answer in finished:
                        number, index = answer.key  # type: ignore[misc]
                        if suites[number].add(index, answer.as_tuple()):
                            touched.add(number)
                    bar.update(len(finished))
                    if not touched:
                        continue
                    for number in sorted(touched):
                        suites[number].sync()
                    if after_batch is not None:
                        after_batch(commits)
                    commits += 1
                    maybe_kill("eval.batch")
            if several:
                # add() commits in the file's order whatever order the answers come in.
                for part in distributed.all_gather(gathered):
                    for (number, index), answer in part:  # type: ignore[misc]
                        suites[number].add(index, answer)
                for suite in suites:
                    suite.sync()
                if after_batch is not None:
                    after_batch(commits)
                maybe_kill("eval.batch")
    finally:
        for suite in suites:
            if suite.handle is not None:
                suite.handle.close()
    return [(suite.rows(), suite.generated) for suite in suites]


def generate_suite(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Record],
    path: str | os.PathLike,
    settings: GenerationSettings,
    *,
    header: dict[str, Any] | None = None,
    gold: Callable[[Record], Any] | None = None,
    category: Callable[[Record], str | None] | None = None,
    progress: bool = True,
    after_batch: Callable[[int], None] | None = None,
) -> tuple[list[Generation], int]:
    """Generate (or reuse) answers to ``records`` in the generations file ``path``.

    Returns the answers in record order and how many of them were generated by this call (0 = all reused).

    Rows already in the file whose templated prompt is unchanged are reused; the rest are answered by the engine
    and appended in the file's order (longest prompt first), each once it and all rows before it are finished, so
    an interrupted and resumed run writes the rows of an uninterrupted one, in the same order.

    ``header`` (suite, model, fingerprint) is written as the file's first line and must match on reuse;
    ``gold`` / ``category`` give the scoring fields stored per row; ``after_batch(i)`` is called after the i-th
    commit of rows (tests inject an interruption there).
    """
    job = SuiteJob(records, Path(path), settings, header, gold, category)
    return generate_suites(model, tokenizer, [job], progress=progress, after_batch=after_batch)[0]
