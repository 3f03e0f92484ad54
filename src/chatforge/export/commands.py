"""`chatforge export`: merge a LoRA adapter into its base model and write a plain HF safetensors folder + checksums.

    chatforge export --model smollm2-135m-instruct --adapter runs/demo/adapter --output exported/demo

The merged folder loads with `AutoModelForCausalLM.from_pretrained` (no peft needed) and carries the tokenizer with
its chat template. `SHA256SUMS` lists every file. Quantization and GGUF writing are not implemented yet: asking for
them raises a clear "not supported" error.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from chatforge.errors import ChatforgeError, NotSupportedError
from chatforge.paths import sha256_file


def write_checksums(folder: Path) -> Path:
    """`SHA256SUMS` in `sha256sum -c` format for every file under `folder`."""
    lines = [
        f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}"
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "SHA256SUMS"
    ]
    out = folder / "SHA256SUMS"
    out.write_text("\n".join(lines) + "\n")
    return out


def export_merged(model_spec: str, adapter: str | None, output: Path, dtype: str = "float32") -> Path:
    """Merge `adapter` (if any) into the base model and save it atomically to `output`."""
    from chatforge.models.loading import load_model_and_tokenizer

    if output.exists() and any(output.iterdir()):
        raise ChatforgeError(f"output folder {output} is not empty; choose a new one")
    model, tokenizer = load_model_and_tokenizer(model_spec, adapter=adapter, dtype=dtype)
    if adapter:
        model = model.merge_and_unload()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=output.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_checksums(tmp)
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="chatforge export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="base model: HF folder, .gguf file or smollm2-135m-instruct")
    ap.add_argument("--adapter", help="LoRA adapter folder to merge into the base")
    ap.add_argument("--output", required=True, help="new folder for the merged model")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--quantize", help="not supported yet (e.g. q4_0, int8)")
    ap.add_argument("--gguf", action="store_true", help="not supported yet: write a GGUF file for llama.cpp/Ollama")
    args = ap.parse_args(argv)
    if args.quantize or args.gguf:
        raise NotSupportedError(
            "quantization and GGUF export are not implemented yet; export a merged safetensors folder and convert it "
            "with llama.cpp's convert_hf_to_gguf.py"
        )
    out = export_merged(args.model, args.adapter, Path(args.output), args.dtype)
    print(f"merged model written to {out} (checksums in {out / 'SHA256SUMS'})")
    return 0
