"""Packing keeps samples independent: packed loss == mean of the unpacked losses; labels never cross boundaries."""

from __future__ import annotations

import pytest
import torch

from chatforge.errors import DataError
from chatforge.models.tiny import tiny_llama
from chatforge.training.losses import trained_token_loss
from chatforge.training.packing import collate, pack, pad_batch, padding_fraction


def _examples(vocab: int, lengths: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        prompt = max(1, n // 3)
        out.append((ids, [-100] * prompt + ids[prompt:]))
    return out


def test_pack_is_deterministic_complete_and_within_bounds():
    lengths = [7, 3, 12, 5, 5, 9, 1, 16, 4]
    ex = _examples(100, lengths)
    rows = pack(ex, max_length=16)
    assert rows == pack(ex, max_length=16)
    assert all(len(r) <= 16 for r in rows)
    assert sorted(n for r in rows for n in r.lengths) == sorted(lengths)
    assert len(rows) == -(-sum(lengths) // 16)  # best fit reaches the lower bound here
    # every sample appears contiguously and unchanged
    pieces = sorted(tuple(r.input_ids[s : s + n]) for r in rows for s, n in zip(_starts(r.lengths), r.lengths))
    assert pieces == sorted(tuple(e[0]) for e in ex)


def _starts(lengths):
    s, out = 0, []
    for n in lengths:
        out.append(s)
        s += n
    return out


def test_collate_positions_labels_and_mask_respect_boundaries():
    ex = _examples(100, [4, 3, 5])
    rows = pack(ex, max_length=16)
    b = collate(rows, pad_id=0, pad_to=16)
    assert b["input_ids"].shape == (1, 16)
    pos, lab, mask = b["position_ids"][0], b["labels"][0], b["attention_mask"][0, 0]
    starts = _starts(rows[0].lengths)
    for s, n in zip(starts, rows[0].lengths):
        assert pos[s : s + n].tolist() == list(range(n))
        assert lab[s].item() == -100  # no label crosses into a sample
        assert mask[s : s + n, s : s + n].equal(torch.ones(n, n, dtype=torch.bool).tril())
        assert not mask[s : s + n, :s].any() and not mask[s : s + n, s + n :].any()
    assert (lab[12:] == -100).all()  # padding is never trained
    assert mask.diagonal().all()  # padding attends to itself: no all-masked rows (NaN in SDPA)


@pytest.mark.parametrize("tied", [False, True])
def test_packed_loss_equals_mean_unpacked_loss_fp32(tied):
    model = tiny_llama(200, tie_word_embeddings=tied).eval()
    ex = _examples(200, [9, 17, 5, 30, 12, 6, 21], seed=3)
    rows = pack(ex, max_length=40)
    assert len(rows) < len(ex)
    packed = collate(rows, pad_id=0, pad_to=40)
    loss_sum, n_tok, _ = trained_token_loss(model, packed, chunk_size=16)
    per_sample_sum, total = torch.zeros(()), 0
    for ids, labels in ex:  # each sample alone: the reference
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        n = sum(1 for x in labels[1:] if x != -100)
        per_sample_sum += out.loss.detach() * n
        total += n
    assert n_tok.item() == total
    torch.testing.assert_close((loss_sum / n_tok).detach(), per_sample_sum / total, rtol=1e-5, atol=1e-5)
    # the standard HF loss on the packed batch (4D mask + position ids) agrees as well
    out = model(**{k: v for k, v in packed.items() if k != "document_ids"})
    torch.testing.assert_close(out.loss.detach(), per_sample_sum / total, rtol=1e-5, atol=1e-5)


def test_packing_without_boundary_label_would_differ():
    """The test above can fail: dropping the boundary fix changes the loss (guards against a vacuous test)."""
    model = tiny_llama(200).eval()
    ex = [(ids, list(ids)) for ids, _ in _examples(200, [8, 8], seed=4)]
    rows = pack(ex, max_length=16)
    good = collate(rows, pad_id=0)
    bad = dict(good)
    bad["labels"] = torch.tensor([rows[0].labels])  # boundary label left in place
    l_good, n_good, _ = trained_token_loss(model, good)
    l_bad, n_bad, _ = trained_token_loss(model, bad)
    assert n_bad.item() == n_good.item() + 1
    assert not torch.isclose(l_good, l_bad)


def test_pad_batch_and_padding_fraction():
    ex = _examples(100, [3, 6])
    b = pad_batch(ex, pad_id=0, pad_to_multiple_of=4)
    assert b["input_ids"].shape == (2, 8)
    assert b["attention_mask"].sum().item() == 9 and (b["labels"][0, 3:] == -100).all()
    assert padding_fraction([[3, 6]]) == pytest.approx(1 - 9 / 12)
    assert padding_fraction([[3, 6]], widths=[8]) == pytest.approx(1 - 9 / 16)


def test_bad_input_is_reported_with_record():
    with pytest.raises(DataError, match="record 1"):
        pack([([1, 2], [1, 2]), ([1] * 20, [1] * 20)], max_length=8)
    with pytest.raises(DataError, match="record 0.*labels"):
        pack([([1, 2], [1])], max_length=8)
    rows = pack([([1] * 20, [1] * 20)], max_length=8, overlong="truncate")
    assert len(rows) == 1 and len(rows[0]) == 8
