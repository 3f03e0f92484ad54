"""Dataset preview for the page: records split into trained / untrained text spans, as `chatforge data show` prints
them (the same encoding and `render_masked`; its colour codes are parsed back into spans)."""

from __future__ import annotations

import copy
import re
import threading
from typing import Any

from chatforge.data.show import GREEN, GREY, RESET, _encodings, _where, render_masked
from chatforge.errors import ChatforgeError

_SPAN = re.compile(re.escape(GREEN) + "|" + re.escape(GREY) + "|" + re.escape(RESET))
_tokenizers: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def spans(ids: list[int], trained: list[bool], tokenizer) -> list[dict[str, Any]]:
    """[{text, trained}] runs of the decoded sequence, from `render_masked`'s coloured output."""
    coloured = render_masked(ids, trained, tokenizer, color=True)
    out: list[dict[str, Any]] = []
    flag = None
    pos = 0
    for m in _SPAN.finditer(coloured):
        if m.start() > pos and flag is not None:
            out.append(dict(text=coloured[pos : m.start()], trained=flag))
        flag = {GREEN: True, GREY: False}.get(m.group(0))
        pos = m.end()
    return out


def _tokenizer(model: str, template: str | None) -> tuple[Any, str]:
    from chatforge.models.loading import default_template_for, load_tokenizer
    from chatforge.templates import prepare_tokenizer

    with _lock:
        key = (model, template or "")
        if key not in _tokenizers:
            tok = copy.deepcopy(load_tokenizer(model))
            name = template or default_template_for(tok)
            prepare_tokenizer(tok, name)  # in memory only, as `data show` does
            _tokenizers[key] = (tok, name)
        return _tokenizers[key]


def preview(
    file: str,
    *,
    model: str,
    template: str | None,
    mask: str = "all_assistant",
    format: str = "auto",
    dataset_info: str | None = None,
    dataset_dir: str | None = None,
    limit: int = 3,
) -> dict[str, Any]:
    """The first `limit` records of `file` with trained spans, and token totals over those records."""
    from chatforge.data.readers import read_records

    result = read_records(file, format=format, on_error="skip", dataset_info=dataset_info, dataset_dir=dataset_dir)
    if not result.records:
        raise ChatforgeError(f"{file}: no records to show ({result.summary()})")
    tok, name = _tokenizer(model, template)
    records = []
    for n, record in enumerate(result.records[:limit], start=1):
        for label, ids, trained in _encodings(record, tok, name, mask):
            records.append(
                dict(
                    title=f"#{n}{' ' + label if label else ''} ({_where(record)})",
                    spans=spans(list(ids), list(trained), tok),
                    tokens=len(ids),
                    trained=int(sum(trained)),
                )
            )
    return dict(template=name, total_records=len(result.records), summary=result.summary(), records=records)
