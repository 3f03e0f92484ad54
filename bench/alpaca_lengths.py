"""Token lengths of the 52k Alpaca set (English side) in SmolLM2's chat format, for bench/train_speed.py --suite alpaca.

Writes [[prompt_tokens, total_tokens], ...] to a JSON file (keep it out of git: it is derived from shared data):

    python3 bench/alpaca_lengths.py ../shared/data/alpaca52k/alpaca_bilingual.json.gz TOKENIZER_DIR .bench_peer/alpaca_lengths.json
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from pathlib import Path

from tokenizers import Tokenizer

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    data, tok_dir, out = argv
    tok = Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))
    with gzip.open(data, "rt", encoding="utf-8") as f:
        records = json.load(f)
    prompts, fulls = [], []
    for r in records:
        user = r["en_instruction"] + (("\n\n" + r["en_input"]) if r["en_input"] else "")
        prompt = SYSTEM + "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n"
        prompts.append(prompt)
        fulls.append(prompt + r["en_output"] + "<|im_end|>\n")
    pairs = [[len(p.ids), len(f.ids)] for p, f in zip(tok.encode_batch(prompts), tok.encode_batch(fulls))]
    Path(out).write_text(json.dumps(pairs))
    totals = [t for _, t in pairs]
    print(
        f"{len(pairs)} samples, mean {statistics.mean(totals):.1f}, median {statistics.median(totals)}, max {max(totals)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
