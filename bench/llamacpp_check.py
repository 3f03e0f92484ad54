"""Does llama.cpp load and chat with what `chatforge export` writes? A LoRA run (on the demo's grounded-QA data) is
exported through the real CLI to GGUF (f16 and q4_0, each with an Ollama Modelfile), then each file is served by
llama.cpp's own `llama-server --jinja` (which renders prompts with the GGUF's `tokenizer.chat_template`, the trained
template) and asked the same conversations as chatforge's engine on the merged HF folder:

- the prompt llama.cpp renders (`POST /apply-template`) must equal chatforge's rendering, character for character;
- llama.cpp's token ids for it (`POST /tokenize`) must equal chatforge's;
- greedy replies (`POST /v1/chat/completions`, temperature 0) are printed beside chatforge's greedy replies; for f16
  they should agree on most tokens, q4_0 is a lossy 4-bit file.

    python3 bench/llamacpp_check.py --llama-bin LLAMA_CPP/build/bin --adapter RUN/adapter --out OUT
    (without --adapter it first trains one: `chatforge data demo`, then `chatforge train` for --demo-steps steps,
    on the GPU where there is one; `--adapter none` exports the base model)

Needs a llama.cpp build (`cmake -B build -DLLAMA_BUILD_UI=OFF -DLLAMA_CURL=OFF && cmake --build build --target
llama-server`) and the `gguf` package. Writes OUT/llamacpp_check.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name two primary colours."},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Say the word 'blue' and nothing else."},
    ],
]


def chatforge(*args: str) -> None:
    cmd = [sys.executable, "-m", "chatforge.cli", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(bin_dir: Path, gguf: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [str(bin_dir / "llama-server"), "-m", str(gguf), "--jinja", "--port", str(port), "-c", "2048", "-ngl", "0"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited ({proc.returncode}); see {log}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"llama-server did not come up; see {log}")


def chatforge_side(folder: Path, max_tokens: int) -> list[dict]:
    """chatforge's prompt ids, their text and the greedy reply for each conversation, from the merged HF folder."""
    from chatforge.data.schema import Conversation, Message
    from chatforge.serving.engine import Engine, SamplingParams

    engine = Engine.load(str(folder))
    out = []
    for msgs in CONVERSATIONS:
        conv = Conversation([Message(m["role"], m["content"]) for m in msgs], [])
        ids = engine.encode(conv)
        text = engine.tokenizer.decode(ids, skip_special_tokens=False)
        [done] = engine.generate([conv], SamplingParams(max_new_tokens=max_tokens, temperature=0.0))
        out.append({"prompt": text, "ids": ids, "reply": done.text})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", required=True, help="folder with llama-server")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument(
        "--adapter",
        help="LoRA adapter folder; 'none' exports the base model (default: train one with `chatforge demo`)",
    )
    ap.add_argument("--template", help="chat template name for the Modelfile (export's --template)")
    ap.add_argument("--demo-steps", type=int, default=60)
    ap.add_argument("--types", default="f16,q4_0")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = a.adapter
    if adapter is None:  # the demo's grounded-QA LoRA, trained where the machine trains fastest (demo itself: CPU)
        chatforge("data", "demo", "--output", str(out / "demo_data"), "--train", "480", "--test", "20")
        cfg = {
            "model": {"name_or_path": a.model},
            "data": {"train": [str(out / "demo_data" / "train.jsonl")], "max_length": 512},
            "template": {"mask": "all_assistant"},
            "peft": {"finetuning": "lora", "r": 16, "alpha": 32, "target_modules": ["all-linear"]},
            "train": {"stage": "sft", "max_steps": a.demo_steps, "batch_size": 8, "learning_rate": 3e-4},
            "output": {"dir": str(out / "adapter")},
        }
        (out / "train.yaml").write_text(json.dumps(cfg), encoding="utf-8")  # JSON is YAML
        chatforge("train", str(out / "train.yaml"))
        adapter = str(out / "adapter")
    report: dict = {"model": a.model, "adapter": adapter, "files": {}}
    for kind in a.types.split(","):
        folder = out / f"export_{kind}"
        if not folder.exists():
            merge = [] if adapter == "none" else ["--adapter", adapter]
            named = ["--template", a.template] if a.template else []
            chatforge("export", "--model", a.model, *merge, *named, "--output", str(folder), "--gguf", kind, "--ollama")
        gguf = next(folder.glob("*.gguf"))
        ours = chatforge_side(folder, a.max_tokens)
        proc, port = serve(Path(a.llama_bin), gguf, out / f"llama-server-{kind}.log")
        rows = []
        try:
            for msgs, mine in zip(CONVERSATIONS, ours):
                rendered = post(port, "/apply-template", {"messages": msgs})["prompt"]
                ids = post(port, "/tokenize", {"content": rendered, "add_special": False, "parse_special": True})
                reply = post(
                    port,
                    "/v1/chat/completions",
                    {"messages": msgs, "temperature": 0, "max_tokens": a.max_tokens, "seed": 0},
                )["choices"][0]["message"]["content"]
                rows.append(
                    {
                        "messages": msgs,
                        "template_equal": None if mine["prompt"] is None else rendered == mine["prompt"],
                        "ids_equal": None if mine["ids"] is None else ids["tokens"] == list(mine["ids"]),
                        "llama_cpp_prompt": rendered,
                        "chatforge_prompt": mine["prompt"],
                        "llama_cpp_reply": reply,
                        "chatforge_reply": mine["reply"],
                    }
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        report["files"][kind] = {"gguf": gguf.name, "bytes": gguf.stat().st_size, "conversations": rows}
        for r in rows:
            print(
                f"[{kind}] template_equal={r['template_equal']} ids_equal={r['ids_equal']}\n"
                f"  llama.cpp: {r['llama_cpp_reply']!r}\n  chatforge: {r['chatforge_reply']!r}",
                flush=True,
            )
    (out / "llamacpp_check.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
