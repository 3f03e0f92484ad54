"""The one generation engine behind `chatforge chat`, `chatforge serve` and evaluation.

It renders prompts with the training template (`chatforge.templates.encode_prompt`), decodes with a KV cache over
left-padded batches, samples per sequence (temperature, top-k, top-p, repetition penalty, seed), stops at the
template's end-of-turn tokens, at stop strings or at `max_new_tokens`, and streams text deltas that never split a
multi-byte character.

The decode loop is written over `model(...)` with a KV cache rather than `model.generate` because the server
needs *continuous batching*: sequences join a running batch between two decode steps (their prefill is merged into
the shared cache by left-padding) and leave it as soon as they finish or their client goes away. `DecodeBatch` is that
loop; `Engine.generate` and `Engine.stream` are thin drivers over it, and the server drives it from a background thread.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from chatforge.data.schema import Conversation, Message
from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.serving.virtual_tokens import VirtualTokens, base_model, cache_keyword, output_cache

log = logging.getLogger("chatforge.engine")

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. temperature 0 = greedy; top_k 0, top_p 1.0 and min_p 0 = no truncation.

    presence/frequency penalties follow OpenAI: `logit -= count * frequency_penalty + (count > 0) * presence_penalty`
    over the tokens generated so far; `repetition_penalty` is the multiplicative (CTRL/HF) one over prompt + generated.
    `logit_bias` maps token ids to a value added to their logits. `top_logprobs > 0` (or `logprobs`) records the
    model's log-probabilities of each generated token (and of the best alternatives) on `Sequence.logprobs`.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0

    def validate(self) -> None:
        """Raise ChatforgeError naming the first bad field (all floats must be finite)."""
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ChatforgeError(f"{name} must be a finite number, got {value!r}")
        if self.max_new_tokens < 1:
            raise ChatforgeError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ChatforgeError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ChatforgeError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ChatforgeError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ChatforgeError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ChatforgeError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ChatforgeError("stop strings must be non-empty strings")
        if not 0 <= self.top_logprobs <= 20:
            raise ChatforgeError(f"top_logprobs must be in [0, 20], got {self.top_logprobs}")
        for token, bias in self.logit_bias.items():
            if not isinstance(token, int) or token < 0 or not math.isfinite(bias):
                raise ChatforgeError(f"logit_bias needs token ids >= 0 and finite values, got {token!r}: {bias!r}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ChatforgeError(f"seed must fit in 64 bits, got {self.seed}")

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or self.top_logprobs > 0

    @property
    def is_plain_greedy(self) -> bool:
        """Greedy with nothing that changes logits: the batch can take one argmax for such rows."""
        return (
            self.temperature <= 0
            and self.repetition_penalty == 1.0
            and not self.presence_penalty
            and not self.frequency_penalty
            and not self.logit_bias
            and not self.wants_logprobs
        )


@dataclass
class Completion:
    """One finished generation. finish_reason: 'stop' (end-of-turn or stop string), 'length', or 'cancelled'."""

    text: str
    message: Message
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class TokenLogprob:
    """The model's log-probability of one generated token, with the `top` best alternatives (id, logprob)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


class Sequence:
    """One prompt being decoded: its sampling state, generated ids, and the text already handed out as deltas.

    `on_delta(text)` (optional) is called from the decoding thread with each new stable piece of text; `cancel()` may be
    called from any thread and takes effect at the next decode step. `constraint` (optional) is a grammar matcher
    (`chatforge.serving.constraints.Constraint`) that masks the logits and follows every sampled token.
    """

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stop_ids: set[int],
        stop_strings: list[str],
        on_delta: Callable[[str], None] | None = None,
        on_finish: Callable[[Sequence], None] | None = None,
        constraint: Any = None,
    ):
        self.prompt_ids = prompt_ids
        self.params = params
        self.stop_ids = stop_ids
        self.stop_strings = [s for s in stop_strings if s]
        self.on_delta = on_delta
        self.on_finish = on_finish
        self.constraint = constraint
        self.adapter = BASE_ADAPTER  # the PEFT adapter this row decodes with (multi-adapter engines only)
        self.generated: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.text = ""  # the full decoded generation so far (cut at a stop string once one is seen)
        self.emitted = ""  # the prefix of `text` already handed out as deltas
        self.finish_reason: str | None = None
        self.error: str | None = None  # set when decoding this sequence failed ('error' finish)
        self.cancelled = threading.Event()
        self.created = time.perf_counter()
        self.first_token_at: float | None = None  # perf_counter() when the first token was sampled (TTFT)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed % 2**64)
        # Repetition penalty needs the set of tokens seen so far (prompt + generated), kept incrementally; OpenAI
        # penalties need counts over generated tokens only.
        self.seen: set[int] = set(prompt_ids) if params.repetition_penalty != 1.0 else set()
        self.counts: Counter[int] = Counter()
        self._pending_logprobs: torch.Tensor | None = None  # this step's log-softmax row, while a token is picked
        self._pending_top: list[tuple[int, float]] = []

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        self.cancelled.set()

    def _emit(self, upto: int) -> None:
        if upto > len(self.emitted):
            delta = self.text[len(self.emitted) : upto]
            self.emitted = self.text[:upto]
            if self.on_delta is not None:
                self.on_delta(delta)

    def _finish(self, reason: str) -> None:
        if self.finish_reason is not None:
            return
        self.finish_reason = reason
        if reason not in ("cancelled", "error"):
            self._emit(len(self.text))  # flush what was held back (a stop-string prefix that never completed)
        if self.on_finish is not None:
            self.on_finish(self)

    def fail(self, err: BaseException | str) -> None:
        """End this sequence with an error (its client gets it); the rest of the batch is not affected."""
        if self.finished:
            return
        self.error = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        self._finish("error")

    def push(self, token: int, tokenizer, max_total: int) -> None:
        """Account for one sampled token: update text, emit the stable delta, decide whether the sequence is done."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.constraint is not None:
            self.constraint.advance(token)
        if token in self.stop_ids:
            if self.logprobs and self.logprobs[-1].token == token:
                self.logprobs.pop()  # the end-of-turn token is not part of the reply (OpenAI leaves it out too)
            self._finish("stop")
            return
        self.generated.append(token)
        if self.params.repetition_penalty != 1.0:
            self.seen.add(token)
        if self.params.presence_penalty or self.params.frequency_penalty:
            self.counts[token] += 1
        # Decoding the whole generation each step keeps byte-level/metaspace merges right; it is cheap next to a
        # forward pass. A trailing U+FFFD is an incomplete multi-byte character: hold it back until it completes.
        full = tokenizer.decode(self.generated, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        cut = _first_stop(full, self.stop_strings)
        if cut is not None:
            self.text = full[:cut]
            self._finish("stop")
            return
        self.text = full
        if len(self.generated) >= self.params.max_new_tokens or len(self.prompt_ids) + len(self.generated) >= max_total:
            # Cut off mid-character: the incomplete bytes are dropped, so no stream or text ends in U+FFFD.
            self.text = full.rstrip(REPLACEMENT_CHAR)
            self._finish("length")
            return
        stable = len(full.rstrip(REPLACEMENT_CHAR))
        stable -= _held_back(full[:stable], self.stop_strings)
        if not full.startswith(self.emitted):
            # A re-tokenization changed already-emitted text (rare); never re-send it, just continue after it.
            self.emitted = full[: len(self.emitted)]
        self._emit(stable)


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string (it may still become one)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


NEG_INF = float("-inf")
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
MIN_TEMPERATURE = 1e-4  # at 1e-4 a logit gap of 0.01 already gives odds of e^-100: sampling is greedy in effect


def sample_next(logits: torch.Tensor, seq: Sequence) -> int:
    """Pick one token id from a [vocab] row of logits under the sequence's sampling parameters.

    Every step is written so that no parameter value allowed by `SamplingParams.validate` can produce NaN: logits are
    shifted so their maximum is 0 before dividing by the temperature (a tiny temperature then tends to greedy instead
    of overflowing), and non-finite values left by penalties are mapped to finite ones or to "banned".
    """
    p = seq.params
    logits = logits.float().clone()
    if p.wants_logprobs:
        _record_logprobs(logits, seq)  # filled in with the token once it is picked (see below)
    if p.logit_bias:
        ids = [t for t in p.logit_bias if t < logits.numel()]
        if ids:
            bias = torch.tensor([p.logit_bias[t] for t in ids], dtype=logits.dtype, device=logits.device)
            logits[torch.tensor(ids, device=logits.device)] += bias
    if p.repetition_penalty != 1.0 and seq.seen:
        ids = torch.tensor(sorted(seq.seen), dtype=torch.long, device=logits.device)
        picked = logits[ids]
        logits[ids] = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and seq.counts:
        ids = torch.tensor(list(seq.counts), dtype=torch.long, device=logits.device)
        counts = torch.tensor(list(seq.counts.values()), dtype=logits.dtype, device=logits.device)
        logits[ids] -= counts * p.frequency_penalty + p.presence_penalty
    if seq.constraint is not None:
        logits = seq.constraint.mask(logits)
    finite_max = torch.finfo(logits.dtype).max
    logits = torch.nan_to_num(logits, nan=NEG_INF, posinf=finite_max, neginf=NEG_INF)
    best = logits.max()
    if not torch.isfinite(best):
        raise ChatforgeError("no token is allowed at this step (every logit is masked)")
    if p.temperature < MIN_TEMPERATURE:  # below this, float32 division breaks down; the limit is greedy anyway
        token = int(torch.argmax(logits))
    else:
        logits = (logits - best) / p.temperature  # <= 0 everywhere; the best token stays at exactly 0
        if p.top_k > 0 and p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, NEG_INF)
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p  # keep the smallest prefix reaching top_p
            drop[0] = False
            probs = probs.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), 0.0)
        if p.min_p > 0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        probs = torch.nan_to_num(probs, nan=0.0).cpu()
        token = int(torch.multinomial(probs, 1, generator=seq.generator)) if probs.sum() > 0 else int(probs.argmax())
    if p.wants_logprobs:
        row = seq._pending_logprobs
        seq.logprobs.append(TokenLogprob(token, float(row[token]), seq._pending_top))
    return token


def _record_logprobs(logits: torch.Tensor, seq: Sequence) -> None:
    """The model's own distribution (before penalties, bias, temperature and truncation), as OpenAI reports it."""
    row = torch.log_softmax(logits, dim=-1)
    k = seq.params.top_logprobs
    top: list[tuple[int, float]] = []
    if k:
        values, ids = torch.topk(row, min(k, row.numel()))
        top = list(zip(ids.tolist(), values.tolist()))
    seq._pending_logprobs = row
    seq._pending_top = top


def pick_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> list[int | None]:
    """One token per row of [B, vocab] logits. A row whose sampling fails gets None and its sequence is failed; the
    other rows are unaffected (one bad request must not break the batch)."""
    tokens: list[int | None] = [None] * len(seqs)
    plain = [i for i, s in enumerate(seqs) if s.params.is_plain_greedy and s.constraint is None]
    if plain:  # one argmax for all plain-greedy rows: one device sync instead of one per row
        best = torch.argmax(logits[plain], dim=-1).tolist()
        for i, t in zip(plain, best):
            tokens[i] = t
    for i, s in enumerate(seqs):
        if tokens[i] is None:
            try:
                tokens[i] = sample_next(logits[i], s)
            except Exception as err:  # noqa: BLE001 - isolate the row, report the reason to its client
                log.warning("sampling failed for one sequence: %s", err)
                s.fail(err)
    return tokens


def push_tokens(seqs: list[Sequence], tokens: list[int | None], tokenizer, max_total: int) -> None:
    """Hand each row its token; a failure (tokenizer, grammar, client callback) fails that row only."""
    for s, t in zip(seqs, tokens):
        if t is None or s.finished:
            continue
        try:
            s.push(t, tokenizer, max_total)
        except Exception as err:  # noqa: BLE001
            log.warning("a sequence failed after sampling: %s", err)
            s.fail(err)


class DecodeBatch:
    """A running batch: one shared KV cache over left-padded rows, one row per live `Sequence`.

    `add()` prefills new sequences and merges them into the cache; `step()` runs one decode step for every row and
    removes finished or cancelled ones. Not thread-safe: one thread drives it.
    """

    def __init__(self, model, tokenizer, max_total: int, multi_adapter: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.max_total = max_total
        # Several LoRA adapters on one base: each row names its adapter and PEFT applies per-row LoRA weights in one
        # forward pass (mixed-batch inference), so requests for different adapters share the batch.
        self.multi_adapter = multi_adapter
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.seqs: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, cache_len + 1]: 1 = real token (incl. the pending next token)
        self.next_tokens: torch.Tensor | None = None  # [B, 1]: tokens to feed at the next step
        # Prompt-learning adapters: the engine feeds the base model and adds the virtual tokens once, at prefill
        # (see `virtual_tokens`); `PeftModel.forward` would add them again at every decode step.
        self.virtual = VirtualTokens.of(model)
        self.forward_model = base_model(model) if self.virtual is not None else model
        self.cache_kw = cache_keyword(model)

    def __len__(self) -> int:
        return len(self.seqs)

    def _adapter_kwargs(self, seqs: list[Sequence]) -> dict:
        return {"adapter_names": [s.adapter for s in seqs]} if self.multi_adapter else {}

    @torch.inference_mode()
    def add(self, seqs: list[Sequence]) -> list[Sequence]:
        """Prefill `seqs` together and join them to the batch; returns those that finished on their first token."""
        if not seqs:
            return []
        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[i, width - len(s.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits, cache, mask = self.prefill(ids, mask, seqs)
        tokens = pick_tokens(logits, seqs)
        push_tokens(seqs, tokens, self.tokenizer, self.max_total)
        tokens = [self.pad_id if t is None else t for t in tokens]  # failed rows leave at the next _drop_done
        new_mask = torch.cat([mask, torch.ones((len(seqs), 1), dtype=torch.long, device=self.device)], dim=1)
        self._merge(cache, new_mask, torch.tensor(tokens, device=self.device).unsqueeze(1), seqs)
        return self._drop_done()

    def prefill(
        self, ids: torch.Tensor, mask: torch.Tensor, seqs: list[Sequence]
    ) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
        """Run left-padded prompts `ids` [B, W] into a fresh cache: (last-position logits [B, vocab], the cache,
        the mask over its columns). With virtual tokens the cache and mask have V more columns at the left."""
        cache = DynamicCache(config=base_model(self.model).config)
        if self.virtual is not None:
            inputs, mask = self.virtual.prefill_inputs(self.model, ids, mask, cache)
        else:
            inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        out = self.forward_model(
            **inputs,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: cache},
            **self._adapter_kwargs(seqs),
        )
        return out.logits[:, -1, :], output_cache(out), mask

    def _merge(self, cache: DynamicCache, mask: torch.Tensor, next_tokens: torch.Tensor, seqs: list[Sequence]) -> None:
        if self.cache is None or not self.seqs:
            self.cache, self.mask, self.next_tokens, self.seqs = cache, mask, next_tokens, list(seqs)
            return
        # Left-pad the shorter side (keys/values along the sequence axis, mask with zeros) then stack the batch.
        old_len, new_len = self.mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)

        def pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)

        for old_layer, new_layer in zip(self.cache.layers, cache.layers):
            old_layer.keys = torch.cat(
                [pad(old_layer.keys, width - old_len, 2), pad(new_layer.keys, width - new_len, 2)]
            )
            old_layer.values = torch.cat(
                [pad(old_layer.values, width - old_len, 2), pad(new_layer.values, width - new_len, 2)]
            )
        self.mask = torch.cat([pad(self.mask, width - old_len, 1), pad(mask, width - new_len, 1)])
        self.next_tokens = torch.cat([self.next_tokens, next_tokens])
        self.seqs.extend(seqs)

    def _drop_done(self) -> list[Sequence]:
        """Remove finished/cancelled rows from the cache; trim cache columns that are padding for every row left."""
        for s in self.seqs:
            if not s.finished and s.cancelled.is_set():
                s._finish("cancelled")
        done = [s for s in self.seqs if s.finished]
        if not done:
            return []
        keep = [i for i, s in enumerate(self.seqs) if not s.finished]
        self.seqs = [self.seqs[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.next_tokens = None
            return done
        idx = torch.tensor(keep, device=self.device)
        self.mask = self.mask[idx]
        self.next_tokens = self.next_tokens[idx]
        first = int(self.mask.any(dim=0).long().argmax())  # leading columns that are padding everywhere
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, first:]
            layer.values = layer.values[idx, :, first:]
        self.mask = self.mask[:, first:]
        return done

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """One decode step for every live row; returns the sequences that finished (or were cancelled) in it."""
        done = self._drop_done()  # cancellations that arrived since the last step
        if not self.seqs:
            return done
        out = self.forward_model(
            input_ids=self.next_tokens,
            attention_mask=self.mask,
            position_ids=self.mask.sum(-1, keepdim=True) - 1,
            use_cache=True,
            **{self.cache_kw: self.cache},
            **self._adapter_kwargs(self.seqs),
        )
        self.cache = output_cache(out)
        logits = out.logits[:, -1, :]
        tokens = pick_tokens(logits, self.seqs)
        push_tokens(self.seqs, tokens, self.tokenizer, self.max_total)
        tokens = [self.pad_id if t is None else t for t in tokens]
        self.next_tokens = torch.tensor(tokens, device=self.device).unsqueeze(1)
        self.mask = torch.cat(
            [self.mask, torch.ones((len(self.seqs), 1), dtype=self.mask.dtype, device=self.device)], 1
        )
        return done + self._drop_done()


def _is_prompt_learning_folder(folder) -> bool:
    import json

    try:
        kind = json.loads((folder / "adapter_config.json").read_text()).get("peft_type", "")
    except (OSError, ValueError):
        return False
    return str(kind).upper() in ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING")


class Engine:
    """A model + tokenizer + chat template, ready to answer conversations (batched, streamed, or one at a time)."""

    def __init__(self, model, tokenizer, template: Any):
        from chatforge.templates import get_template, stop_token_ids

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.stop_ids = set(stop_token_ids(tokenizer, self.template))
        self.max_total = int(getattr(model.config, "max_position_embeddings", 0) or 4096)
        self.last_sequence: Sequence | None = None  # the latest `stream()`'s sequence (text, tokens, finish reason)
        self._constraints = None
        self._constraints_lock = threading.Lock()
        self.adapters: dict[str, str] = {}  # served name -> PEFT adapter name, when several adapters share the base
        self.static: dict | None = None  # `use_static_cache` settings: batches get a StaticCache (+ CUDA graphs)
        self._decode = None  # the (compiled) decode forward, shared by every static batch of this engine
        self._static_batches: dict[int, Any] = {}  # slot count -> its StaticDecodeBatch (reused when drained)

    @classmethod
    def load(
        cls,
        model_spec: str,
        adapter: str | None = None,
        template: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
    ) -> Engine:
        """Load a model (HF folder, .gguf, or the embedded name) with an optional adapter through the one assembly;
        `device="auto"` generates on CUDA when present (bf16 weights there with `dtype="auto"`)."""
        from chatforge.config import TemplateConfig
        from chatforge.models.assembly import assemble, model_config

        parts = assemble(model_config(model_spec, adapter, dtype=dtype, device=device), TemplateConfig(name=template))
        return cls(parts.model, parts.tokenizer, parts.template)

    @classmethod
    def from_config(cls, model_cfg, template_cfg=None) -> Engine:
        """The engine for a run config's `model` and `template` sections (every `model.*` key honoured)."""
        from chatforge.models.assembly import assemble

        parts = assemble(model_cfg, template_cfg)
        return cls(parts.model, parts.tokenizer, parts.template)

    # -- building blocks shared with the server ------------------------------------------------------------------

    def encode(self, conv: Conversation) -> list[int]:
        """The prompt ids for a conversation: the training template plus the assistant header."""
        from chatforge.templates import encode_prompt

        return list(encode_prompt(conv, self.tokenizer, self.template))

    def new_sequence(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        on_delta: Callable[[str], None] | None = None,
        on_finish: Callable[[Sequence], None] | None = None,
        *,
        grammar: str | None = None,
        chat: bool = True,
    ) -> Sequence:
        """A sequence ready for a batch. `grammar` (llguidance Lark text, see `constraints`) constrains the output;
        `chat=False` (plain completions) stops only at end-of-sequence tokens and `params.stop`, not at the template's
        end-of-turn text."""
        from chatforge.evaluation.reward import is_score_model

        if is_score_model(self.model):  # stage rm's output has a score head, no LM head
            raise NotSupportedError(
                "this model is a reward model (a score head): it scores conversations and cannot generate; use "
                "chatforge serve (POST /v1/score) or chatforge eval task reward"
            )
        params.validate()
        if len(prompt_ids) >= self.max_total:
            raise ChatforgeError(f"prompt is {len(prompt_ids)} tokens; the model's context is {self.max_total} tokens")
        vocab = self.vocab_size
        bad = [t for t in params.logit_bias if t >= vocab]
        if bad:
            raise ChatforgeError(f"logit_bias names token id {bad[0]}, but the vocabulary has {vocab} tokens")
        stops = (list(self.template.stop_strings) if chat else []) + list(params.stop)
        constraint = self.constraints().constraint(grammar) if grammar is not None else None
        return Sequence(prompt_ids, params, self.stop_ids, stops, on_delta, on_finish, constraint=constraint)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def constraints(self):
        """The grammar-constraint factory for this tokenizer (built once, on first use: llguidance is optional)."""
        with self._constraints_lock:
            if self._constraints is None:
                from chatforge.serving.constraints import ConstraintFactory

                self._constraints = ConstraintFactory(self.tokenizer, sorted(self.stop_ids), self.vocab_size)
            return self._constraints

    @torch.inference_mode()
    def embed(self, prompts: list[list[int]], adapter: str = BASE_ADAPTER) -> torch.Tensor:
        """[N, hidden] float32 embeddings: the mean over real tokens of the decoder's last hidden state (after the
        final norm), L2-normalised. Prompts are left-padded into one batch. `adapter`: the PEFT adapter name to use
        on a multi-adapter engine."""
        width = max(len(p) for p in prompts)
        device = next(self.model.parameters()).device
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        if self.adapters:  # through PEFT's forward, which applies the chosen adapter per row
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids,
                output_hidden_states=True,
                logits_to_keep=1,
                adapter_names=[adapter] * len(prompts),
            )
            hidden = out.hidden_states[-1]  # after the final norm, as last_hidden_state
        else:
            decoder = base_model(self.model).get_decoder()  # LoRA layers are injected in place: they still apply
            virtual = VirtualTokens.of(self.model)
            if virtual is not None:  # the virtual tokens condition the prompt, as in generation; pooled over the prompt
                cache = DynamicCache(config=base_model(self.model).config)
                inputs, _ = virtual.prefill_inputs(self.model, ids, mask, cache)
                hidden = decoder(**inputs, use_cache=True, **{cache_keyword(self.model): cache}).last_hidden_state
                hidden = hidden[:, -width:]
            else:
                hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1).float() / weights.sum(1).float()
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    def use_static_cache(self, slots: int = 8, max_cache_len: int | None = None, compile: str = "auto") -> None:
        """Decode with a preallocated `StaticCache` of `slots` rows x `max_cache_len` columns (default: the model's
        context, at most 4096) from now on; `compile` "auto" captures the decode step as a CUDA graph on CUDA
        (`torch.compile(mode="reduce-overhead")`), "on" forces it, "off" runs it eagerly (see `static_cache`)."""
        from chatforge.serving.static_cache import compile_decode

        if self.adapters:
            raise NotSupportedError("--static-cache with several adapters is not supported; drop one of them")
        length = int(max_cache_len or min(self.max_total, 4096))
        if length < 2 or slots < 1:
            raise ChatforgeError(f"static cache needs slots >= 1 and a length >= 2, got {slots} and {length}")
        self.max_total = min(self.max_total, length)  # prompt + reply must fit the cache row
        batch = DecodeBatch(self.model, self.tokenizer, self.max_total)
        device = next(self.model.parameters()).device
        self._decode = compile_decode(batch.forward_model, compile, device)
        self.static = {"slots": int(slots), "max_cache_len": length, "compile": compile}
        self._static_batches = {}

    def new_batch(self, slots: int | None = None) -> DecodeBatch:
        """A decode batch; with a static cache it has `slots` rows (default: `use_static_cache`'s)."""
        if self.static is not None:
            from chatforge.serving.static_cache import StaticDecodeBatch

            # One batch (one StaticCache) per slot count, reused once it has drained: a captured CUDA graph keeps the
            # cache's addresses, and a new cache object would mean recording (or compiling) the step again.
            n = int(slots or self.static["slots"])
            batch = self._static_batches.get(n)
            if batch is not None and batch.reserved and len(batch) and all(s.cancelled.is_set() for s in batch.seqs):
                batch._drop_done()  # its holder walked away (a stream closed early): every row is cancelled
            if batch is None or batch.reserved:
                batch = StaticDecodeBatch(
                    self.model,
                    self.tokenizer,
                    self.max_total,
                    slots=n,
                    max_cache_len=self.static["max_cache_len"],
                    decode=self._decode,
                    multi_adapter=bool(self.adapters),
                )
                self._static_batches[n] = batch
            batch.reserved = True
            return batch
        return DecodeBatch(self.model, self.tokenizer, self.max_total, multi_adapter=bool(self.adapters))

    def add_adapter(self, name: str, path: str) -> None:
        """Load one more LoRA adapter onto the (PEFT) base under `name`; rows choose it with `Sequence.adapter`.

        The engine must have been loaded with an adapter (its PEFT name is "default"); adapters must share the
        tokenizer (an adapter that added tokens cannot be mixed with others)."""
        from pathlib import Path

        folder = Path(path).expanduser()
        if not (folder / "adapter_config.json").is_file():
            raise ChatforgeError(f"--adapter {name}={path}: expected a folder with adapter_config.json")
        if not hasattr(self.model, "load_adapter"):
            raise ChatforgeError("several adapters need the first --adapter to be loaded with the model")
        if VirtualTokens.of(self.model) is not None or _is_prompt_learning_folder(folder):
            raise NotSupportedError(
                f"--adapter {name}={path}: several adapters in one process work with LoRA adapters only; a prefix / "
                "prompt / P-tuning adapter changes the prompt itself and needs a server of its own"
            )
        if (folder / "tokenizer_config.json").is_file():
            from chatforge.models.loading import load_tokenizer

            if load_tokenizer(folder).get_vocab() != self.tokenizer.get_vocab():
                raise ChatforgeError(f"--adapter {name}={path}: its tokenizer differs from the base adapter's")
        try:
            self.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ChatforgeError(f"cannot apply adapter {folder}: {type(err).__name__}: {err}") from err
        self.model.eval()
        self.adapters[name] = name

    def completion(self, seq: Sequence) -> Completion:
        from chatforge.templates import parse_reply

        message = parse_reply(seq.text, self.template)
        reason = seq.finish_reason or "length"
        return Completion(seq.text, message, len(seq.prompt_ids), len(seq.generated), reason)

    # -- public API ----------------------------------------------------------------------------------------------

    def generate(
        self, convs: list[Conversation], params: SamplingParams | None = None, batch_size: int = 16
    ) -> list[Completion]:
        """Answer every conversation; up to `batch_size` are decoded together, a finished row is refilled at once."""
        params = params or SamplingParams()
        seqs = [self.new_sequence(self.encode(c), params) for c in convs]
        # Similar lengths side by side waste less padding; results are returned in input order regardless.
        waiting = deque(sorted(seqs, key=lambda s: len(s.prompt_ids)))
        batch = self.new_batch(slots=min(batch_size, len(seqs)) or 1)
        while waiting or len(batch):
            free = batch_size - len(batch)
            if waiting and free > 0:
                batch.add([waiting.popleft() for _ in range(min(free, len(waiting)))])
            if len(batch):
                batch.step()
        return [self.completion(s) for s in seqs]

    def stream(self, conv: Conversation, params: SamplingParams | None = None) -> Iterator[str]:
        """Yield text deltas of one answer as they are decoded. The sequence is kept on `self.last_sequence`, so after
        the stream ends `engine.completion(engine.last_sequence)` gives the parsed message (tool calls) and counts."""
        pending: list[str] = []
        seq = self.new_sequence(self.encode(conv), params or SamplingParams(), on_delta=pending.append)
        self.last_sequence = seq
        batch = self.new_batch(slots=1)
        batch.add([seq])
        try:
            while True:
                yield from pending
                pending.clear()
                if seq.finished:
                    return
                batch.step()
        finally:
            if not seq.finished:
                seq.cancel()
