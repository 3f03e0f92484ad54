"""The one generation engine behind `chatforge chat`, `chatforge serve` and evaluation.

It renders prompts with the training template (`chatforge.templates.encode_prompt`), decodes with a KV cache over
left-padded batches, samples per sequence (temperature, top-k, top-p, repetition penalty, seed), stops at the
template's end-of-turn tokens, at stop strings or at `max_new_tokens`, and streams text deltas that never split a
multi-byte character.

The decode loop is written over `model(...)` with `past_key_values` rather than `model.generate` because the server
needs *continuous batching*: sequences join a running batch between two decode steps (their prefill is merged into
the shared cache by left-padding) and leave it as soon as they finish or their client goes away. `DecodeBatch` is that
loop; `Engine.generate` and `Engine.stream` are thin drivers over it, and the server drives it from a background thread.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from chatforge.data.schema import Conversation, Message
from chatforge.errors import ChatforgeError

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. temperature 0 = greedy; top_k 0 and top_p 1.0 = no truncation."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Raise ChatforgeError naming the first bad field."""
        if self.max_new_tokens < 1:
            raise ChatforgeError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ChatforgeError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ChatforgeError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ChatforgeError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ChatforgeError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ChatforgeError("stop strings must be non-empty strings")


@dataclass
class Completion:
    """One finished generation. finish_reason: 'stop' (end-of-turn or stop string), 'length', or 'cancelled'."""

    text: str
    message: Message
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class Sequence:
    """One prompt being decoded: its sampling state, generated ids, and the text already handed out as deltas.

    `on_delta(text)` (optional) is called from the decoding thread with each new stable piece of text; `cancel()` may be
    called from any thread and takes effect at the next decode step.
    """

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stop_ids: set[int],
        stop_strings: list[str],
        on_delta: Callable[[str], None] | None = None,
        on_finish: Callable[[Sequence], None] | None = None,
    ):
        self.prompt_ids = prompt_ids
        self.params = params
        self.stop_ids = stop_ids
        self.stop_strings = [s for s in stop_strings if s]
        self.on_delta = on_delta
        self.on_finish = on_finish
        self.generated: list[int] = []
        self.text = ""  # the full decoded generation so far (cut at a stop string once one is seen)
        self.emitted = ""  # the prefix of `text` already handed out as deltas
        self.finish_reason: str | None = None
        self.error: str | None = None  # set when the decode loop failed ('error' finish)
        self.cancelled = threading.Event()
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        # Repetition penalty needs the set of tokens seen so far (prompt + generated), kept incrementally.
        self.seen: set[int] = set(prompt_ids) if params.repetition_penalty != 1.0 else set()

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
        self.finish_reason = reason
        if reason != "cancelled":
            self._emit(len(self.text))  # flush what was held back (a stop-string prefix that never completed)
        if self.on_finish is not None:
            self.on_finish(self)

    def push(self, token: int, tokenizer, max_total: int) -> None:
        """Account for one sampled token: update text, emit the stable delta, decide whether the sequence is done."""
        if token in self.stop_ids:
            self._finish("stop")
            return
        self.generated.append(token)
        if self.params.repetition_penalty != 1.0:
            self.seen.add(token)
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


def sample_next(logits: torch.Tensor, seq: Sequence) -> int:
    """Pick one token id from a [vocab] row of logits under the sequence's sampling parameters."""
    p = seq.params
    logits = logits.float()
    if p.repetition_penalty != 1.0 and seq.seen:
        ids = torch.tensor(sorted(seq.seen), dtype=torch.long, device=logits.device)
        picked = logits[ids]
        logits[ids] = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
    if p.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / p.temperature
    if p.top_k > 0 and p.top_k < logits.numel():
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= p.top_p  # keep the smallest prefix reaching top_p
        drop[0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=seq.generator))


class DecodeBatch:
    """A running batch: one shared KV cache over left-padded rows, one row per live `Sequence`.

    `add()` prefills new sequences and merges them into the cache; `step()` runs one decode step for every row and
    removes finished or cancelled ones. Not thread-safe: one thread drives it.
    """

    def __init__(self, model, tokenizer, max_total: int):
        self.model = model
        self.tokenizer = tokenizer
        self.max_total = max_total
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.seqs: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, cache_len + 1]: 1 = real token (incl. the pending next token)
        self.next_tokens: torch.Tensor | None = None  # [B, 1]: tokens to feed at the next step

    def __len__(self) -> int:
        return len(self.seqs)

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
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :]
        tokens = [sample_next(logits[i], s) for i, s in enumerate(seqs)]
        for s, t in zip(seqs, tokens):
            s.push(t, self.tokenizer, self.max_total)
        new_mask = torch.cat([mask, torch.ones((len(seqs), 1), dtype=torch.long, device=self.device)], dim=1)
        self._merge(out.past_key_values, new_mask, torch.tensor(tokens, device=self.device).unsqueeze(1), seqs)
        return self._drop_done()

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
        out = self.model(
            input_ids=self.next_tokens,
            attention_mask=self.mask,
            position_ids=self.mask.sum(-1, keepdim=True) - 1,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        logits = out.logits[:, -1, :]
        tokens = [sample_next(logits[i], s) for i, s in enumerate(self.seqs)]
        for s, t in zip(self.seqs, tokens):
            s.push(t, self.tokenizer, self.max_total)
        self.next_tokens = torch.tensor(tokens, device=self.device).unsqueeze(1)
        self.mask = torch.cat(
            [self.mask, torch.ones((len(self.seqs), 1), dtype=self.mask.dtype, device=self.device)], 1
        )
        return done + self._drop_done()


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
    ) -> Sequence:
        params.validate()
        if len(prompt_ids) >= self.max_total:
            raise ChatforgeError(f"prompt is {len(prompt_ids)} tokens; the model's context is {self.max_total} tokens")
        stops = list(self.template.stop_strings) + list(params.stop)
        return Sequence(prompt_ids, params, self.stop_ids, stops, on_delta, on_finish)

    def new_batch(self) -> DecodeBatch:
        return DecodeBatch(self.model, self.tokenizer, self.max_total)

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
        batch = self.new_batch()
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
        batch = self.new_batch()
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
