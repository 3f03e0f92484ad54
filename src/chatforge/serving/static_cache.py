"""A decode batch over transformers' `StaticCache`, with the decode step captured as a CUDA graph on a GPU.

Why: on a GPU the dynamic-cache loop is bound by Python and kernel-launch overhead, not by memory bandwidth (one
stream of a 7B model decoded at ~12% of the bandwidth bound). A static cache gives every decode step the same tensor
shapes and addresses, so `torch.compile(mode="reduce-overhead")` can record the whole step once as a CUDA graph and
replay it.

Layout. The cache has a fixed number of rows (`slots`, the most sequences decoded together) and columns
(`max_cache_len`). All rows share one write column `t` (transformers' static layers keep one write position for the
whole batch), so rows are right-aligned at `t` exactly like the dynamic batch's left padding:

- `add` prefills the new prompts with a dynamic cache (prefill shapes vary: it is not graphed) and copies their
  key/values into free rows so that they end at column `t`; a prompt longer than `t` first shifts every row right;
- `step` feeds one token per row (free rows get a pad token and are ignored), with the attention mask over all
  `max_cache_len` columns and position ids counted from the mask, then advances `t`;
- when `t` reaches the end, columns that are padding in every live row are dropped (a shift left); if there are
  none, the rows that reach back to the first column finish with `length` (their context is full).

Every copy is in place, so the graph's input and cache addresses never change. Greedy tokens equal the dynamic
cache's (tested on CPU, where the same code runs eagerly).
"""

from __future__ import annotations

import torch
from transformers import StaticCache

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.serving.engine import DecodeBatch, Sequence, pick_tokens, push_tokens
from chatforge.serving.virtual_tokens import base_model


def compile_decode(forward_model, compile: str, device: torch.device):
    """The decode-step callable: `torch.compile(mode="reduce-overhead")` (CUDA graphs) when `compile` is "on", or
    "auto" on a CUDA device; the plain forward otherwise (CPU: compiling there buys little and takes minutes)."""
    if compile not in ("auto", "on", "off"):
        raise ChatforgeError(f"compile must be auto, on or off, got {compile!r}")
    if compile == "off" or (compile == "auto" and device.type != "cuda"):
        return forward_model
    return torch.compile(forward_model, mode="reduce-overhead", dynamic=False)


class StaticDecodeBatch(DecodeBatch):
    """`DecodeBatch`'s contract (`add`, `step`, `seqs`, `len`) over a preallocated `StaticCache` (see the module
    docstring). `decode` is the (possibly compiled) forward used for decode steps; it is shared between batches of
    one engine so a graph is recorded once per slot count."""

    def __init__(
        self, model, tokenizer, max_total: int, *, slots: int, max_cache_len: int, decode, multi_adapter: bool = False
    ):
        if multi_adapter:
            raise NotSupportedError(
                "--static-cache with several adapters: the per-row adapter choice changes every step, which a "
                "captured decode step cannot follow; serve one adapter per process or drop --static-cache"
            )
        super().__init__(model, tokenizer, max_total)
        if slots < 1 or max_cache_len < 2:
            raise ChatforgeError(f"static cache needs slots >= 1 and max_cache_len >= 2, got {slots}, {max_cache_len}")
        self.slots = slots
        self.capacity = max_cache_len
        self.decode = decode
        self.cache = StaticCache(config=base_model(model).config, max_cache_len=max_cache_len)
        kinds = {type(layer).__name__ for layer in self.cache.layers}
        if kinds != {"StaticLayer"}:
            raise NotSupportedError(
                f"--static-cache supports models with full attention in every layer; this one has {sorted(kinds)} "
                "(sliding-window layers): drop --static-cache"
            )
        self.rows: list[Sequence | None] = [None] * slots
        self.mask = torch.zeros((slots, max_cache_len), dtype=torch.long, device=self.device)
        self.next_tokens = torch.full((slots, 1), self.pad_id, dtype=torch.long, device=self.device)
        self.t = 0  # the shared write column: the next decode step writes here
        self._ready = False
        # Held by whoever `Engine.new_batch` gave it to, until it drains after use (then the engine may hand it out
        # again, with the same cache addresses the captured graph was recorded with).
        self.reserved = False

    # `seqs` is the live rows in slot order (the scheduler reads it and may assign a subset back).
    @property
    def seqs(self) -> list[Sequence]:
        return [s for s in getattr(self, "rows", []) if s is not None]

    @seqs.setter
    def seqs(self, keep: list[Sequence]) -> None:
        if not hasattr(self, "rows"):
            return  # DecodeBatch.__init__ assigns [] before the slots exist
        wanted = {id(s) for s in keep}
        for i, s in enumerate(self.rows):
            if s is not None and id(s) not in wanted:
                self._free(i)

    def __len__(self) -> int:
        return sum(s is not None for s in self.rows)

    def _free(self, slot: int) -> None:
        self.rows[slot] = None
        self.mask[slot].zero_()

    def _set_length(self) -> None:
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(self.t)

    def _shift(self, by: int) -> None:
        """Move every row's columns [0, t) by `by` (right if > 0, left if < 0) in place; t moves with them."""
        if by == 0:
            return
        new_t = self.t + by
        for layer in self.cache.layers:
            for buf in (layer.keys, layer.values):
                if by > 0:
                    buf[:, :, by:new_t] = buf[:, :, : self.t].clone()
                else:
                    buf[:, :, :new_t] = buf[:, :, -by : self.t].clone()
        if by > 0:
            self.mask[:, by:new_t] = self.mask[:, : self.t].clone()
            self.mask[:, :by] = 0
        else:
            self.mask[:, :new_t] = self.mask[:, -by : self.t].clone()
        self.mask[:, new_t:] = 0
        self.t = new_t
        self._set_length()

    @torch.inference_mode()
    def add(self, seqs: list[Sequence]) -> list[Sequence]:
        if not seqs:
            return []
        free = [i for i, s in enumerate(self.rows) if s is None]
        if len(seqs) > len(free):
            raise ChatforgeError(f"the static batch has {len(free)} free rows, {len(seqs)} sequences were added")
        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[i, width - len(s.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits, prefill_cache, mask = self.prefill(ids, mask, seqs)
        length = mask.shape[1]
        if length >= self.capacity:
            raise ChatforgeError(
                f"prompt needs {length} cache columns; the static cache has {self.capacity} (raise --static-cache-len)"
            )
        tokens = pick_tokens(logits, seqs)
        push_tokens(seqs, tokens, self.tokenizer, self.max_total)
        if not self._ready:  # allocate the static rows from the first prefill's key/value shapes and dtype
            k = prefill_cache.layers[0].keys
            self.cache.early_initialization(self.slots, k.shape[1], k.shape[3], k.dtype, k.device)
            self._ready = True
        if not len(self):
            self.mask.zero_()
            self.t = length
            self._set_length()
        elif length > self.t:
            self._shift(length - self.t)
        start = self.t - length
        for i, (s, tok) in enumerate(zip(seqs, tokens)):
            slot = free[i]
            for layer, new in zip(self.cache.layers, prefill_cache.layers):
                layer.keys[slot, :, start : self.t] = new.keys[i]
                layer.values[slot, :, start : self.t] = new.values[i]
            self.mask[slot].zero_()
            self.mask[slot, start : self.t] = mask[i]
            self.next_tokens[slot, 0] = self.pad_id if tok is None else tok
            self.rows[slot] = s
        return self._drop_done()

    def _drop_done(self) -> list[Sequence]:
        done = []
        for i, s in enumerate(self.rows):
            if s is None:
                continue
            if not s.finished and s.cancelled.is_set():
                s._finish("cancelled")
            if s.finished:
                done.append(s)
                self._free(i)
        if not len(self):
            self.t = 0
            self.mask.zero_()
            if done:
                self.reserved = False
        return done

    def _make_room(self) -> list[Sequence]:
        """At the last column: drop leading columns that are padding for every live row, else end the rows whose
        context fills the cache (finish 'length')."""
        live = [i for i, s in enumerate(self.rows) if s is not None]
        used = self.mask[live, : self.t].any(dim=0)
        first = int(used.long().argmax()) if bool(used.any()) else self.t
        done = []
        if first == 0:
            for i in live:
                if int(self.mask[i, 0]):
                    s = self.rows[i]
                    s._finish("length")
                    done.append(s)
                    self._free(i)
            if not len(self):
                self.t = 0
                self.mask.zero_()
                self.reserved = False
                return done
            live = [i for i, s in enumerate(self.rows) if s is not None]
            used = self.mask[live, : self.t].any(dim=0)
            first = int(used.long().argmax())
        self._shift(-first)
        return done

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        done = self._drop_done()
        if not len(self):
            return done
        if self.t >= self.capacity:
            done += self._make_room()
            if not len(self):
                return done
        self.mask[:, self.t] = 1  # the token fed now (free rows attend to their own pad token: no empty softmax)
        positions = self.mask.sum(-1, keepdim=True) - 1
        if self.decode is not self.forward_model and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            torch.compiler.cudagraph_mark_step_begin()
        out = self.decode(
            input_ids=self.next_tokens,
            attention_mask=self.mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: self.cache},
        )
        self.t += 1
        live = [i for i, s in enumerate(self.rows) if s is not None]
        seqs = [self.rows[i] for i in live]
        logits = out.logits[live, -1, :]
        tokens = pick_tokens(logits, seqs)
        push_tokens(seqs, tokens, self.tokenizer, self.max_total)
        picked = torch.tensor([self.pad_id if t is None else t for t in tokens], device=self.device)
        self.next_tokens[torch.tensor(live, device=self.device), 0] = picked
        return done + self._drop_done()
