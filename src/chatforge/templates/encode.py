"""Turn rendered segments into token ids plus a per-token trained mask, safely.

Two guarantees:
1. Ids equal `tokenizer.apply_chat_template` with our Jinja template: the rendered text is tokenized in one call,
   exactly as transformers does, and the mask comes from character offsets.
2. Message text can never forge a role marker. If any content segment contains the text of a special token (say a
   user types `<|im_start|>assistant`), the conversation is tokenized piece by piece instead, with special-token
   matching switched off for content, so that text becomes ordinary tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chatforge.data.schema import Conversation
from chatforge.errors import ChatforgeError
from chatforge.templates.formats import ChatTemplate, get_template
from chatforge.templates.render import MaskMode, Segment, render_segments, to_jinja

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    trained: list[bool]

    def labels(self) -> list[int]:
        """Labels for HF causal LMs (which shift by one internally): the id where trained, -100 elsewhere."""
        return [t if m else IGNORE_INDEX for t, m in zip(self.input_ids, self.trained)]

    @property
    def num_trained(self) -> int:
        return sum(self.trained)

    def __len__(self) -> int:
        return len(self.input_ids)


def special_strings(tokenizer) -> list[str]:
    """The text of every special token (compute once per tokenizer when encoding many conversations)."""
    found = set(tokenizer.all_special_tokens)
    found.update(t.content for t in tokenizer.added_tokens_decoder.values() if getattr(t, "special", False))
    return [s for s in found if s]


def has_forged_marker(segments: list[Segment], specials: list[str]) -> bool:
    """True when message text spells a special token (it must then be tokenized as plain text)."""
    return any(s in seg.text for seg in segments if seg.is_content for s in specials)


def trained_flags(segs, enc) -> np.ndarray:
    """Per-token trained flags (uint8): a token is trained if any character it covers is trained.

    Tokens are in text order, so the tokens touching a trained segment are exactly those from the token of its first
    character to the token of its last; that is two lookups per segment instead of one per token. Where a character
    belongs to no token (some normalisers drop characters), fall back to comparing every token's offsets."""
    n = len(enc.ids)
    flags = np.zeros(n, dtype=np.uint8)
    total = sum(len(s.text) for s in segs)
    pos = 0
    for seg in segs:
        end = pos + len(seg.text)
        if seg.trained:
            first, last = enc.char_to_token(pos), enc.char_to_token(end - 1)
            if first is None or last is None:
                return _trained_flags_by_offsets(segs, enc)
            # Several tokens can cover the segment's last character (byte-level BPE splits a multi-byte character):
            # the tokens up to the one holding the next character all touch this segment, and that one too if it
            # starts inside it.
            if end < total:
                nxt = enc.char_to_token(end)
                if nxt is None:
                    return _trained_flags_by_offsets(segs, enc)
                last = max(last, nxt - 1)
                if enc.token_to_chars(nxt)[0] < end:
                    last = nxt
            else:
                last = n - 1
            flags[first : last + 1] = 1
        pos = end
    return flags


def _trained_flags_by_offsets(segs, enc) -> np.ndarray:
    char_trained = np.zeros(sum(len(s.text) for s in segs) + 1, dtype=np.int64)
    pos = 0
    for seg in segs:
        if seg.trained:
            char_trained[pos + 1 : pos + 1 + len(seg.text)] = 1
        pos += len(seg.text)
    cum = np.cumsum(char_trained)
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
    a, b = offsets[:, 0], offsets[:, 1]
    return ((b > a) & (cum[b] - cum[a] > 0)).astype(np.uint8)


def _backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ChatforgeError("chatforge needs a fast (Rust `tokenizers`) tokenizer; this one has no backend_tokenizer")
    return backend


def _encode_one_shot(segments: list[Segment], tokenizer) -> Encoded:
    text = "".join(s.text for s in segments)
    enc = _backend(tokenizer).encode(text, add_special_tokens=False)
    # Special tokens cover their own marker text, so an end-of-turn marker inherits its segment's flag.
    return Encoded(list(enc.ids), trained_flags(segments, enc).astype(bool).tolist())


def _encode_piecewise(segments: list[Segment], tokenizer) -> Encoded:
    backend = _backend(tokenizer)
    ids: list[int] = []
    trained: list[bool] = []
    previous = backend.encode_special_tokens
    try:
        for seg in segments:
            # Content is tokenized with special-token matching off: marker text in it stays plain text.
            backend.encode_special_tokens = seg.is_content
            piece = backend.encode(seg.text, add_special_tokens=False).ids
            ids += piece
            trained += [seg.trained] * len(piece)
    finally:
        backend.encode_special_tokens = previous
    return Encoded(ids, trained)


def encode_segments(segments: list[Segment], tokenizer) -> Encoded:
    if has_forged_marker(segments, special_strings(tokenizer)):
        return _encode_piecewise(segments, tokenizer)
    return _encode_one_shot(segments, tokenizer)


def encode_conversation(
    conv: Conversation,
    tokenizer,
    template: ChatTemplate | str,
    mask: MaskMode = "all_assistant",
    max_length: int | None = None,
) -> Encoded:
    """Token ids and the trained mask of a whole conversation (truncated from the right to `max_length`)."""
    template = get_template(template)
    encoded = encode_segments(render_segments(conv, template, mask), tokenizer)
    if max_length is not None and len(encoded) > max_length:
        encoded = Encoded(encoded.input_ids[:max_length], encoded.trained[:max_length])
    return encoded


def encode_prompt(conv: Conversation, tokenizer, template: ChatTemplate | str) -> list[int]:
    """What inference feeds the model: the conversation so far plus the assistant header."""
    template = get_template(template)
    return encode_segments(render_segments(conv, template, add_generation_prompt=True), tokenizer).input_ids


def encode_text(text: str, tokenizer, add_eos: bool = True) -> list[int]:
    """Pretraining text: plain tokens (special-token text in it stays plain) followed by EOS."""
    backend = _backend(tokenizer)
    previous = backend.encode_special_tokens
    try:
        backend.encode_special_tokens = True
        ids = list(backend.encode(text, add_special_tokens=False).ids)
    finally:
        backend.encode_special_tokens = previous
    if add_eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def prepare_tokenizer(tokenizer, template: ChatTemplate | str, install_jinja: bool = True) -> int:
    """Make `tokenizer` able to render `template`: add missing marker tokens as special tokens and install the Jinja
    chat template (unless `install_jinja=False`, as with `template.use_model_jinja`, where the model's own Jinja stays).
    Returns the number of tokens added (resize the model's embeddings when > 0)."""
    template = get_template(template)
    vocab = tokenizer.get_vocab()
    missing = [t for t in template.special_tokens if t not in vocab]
    added = tokenizer.add_special_tokens({"additional_special_tokens": missing}) if missing else 0
    # Markers present in the vocabulary but not registered as special must be special, or text could forge them.
    specials = set(special_strings(tokenizer))
    unregistered = [t for t in template.special_tokens if t not in specials]
    if unregistered:
        tokenizer.add_special_tokens({"additional_special_tokens": unregistered})
    if install_jinja:
        tokenizer.chat_template = to_jinja(template)
    return added


def stop_token_ids(tokenizer, template: ChatTemplate | str) -> list[int]:
    """Ids that end an assistant turn: the template's stop strings that are single tokens, and the tokenizer's EOS."""
    template = get_template(template)
    ids = []
    for marker in template.stop_strings:
        marker_id = tokenizer.convert_tokens_to_ids(marker)
        if marker_id is not None and marker_id != tokenizer.unk_token_id and marker_id not in ids:
            ids.append(marker_id)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
