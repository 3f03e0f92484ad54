"""`chatforge export`: merge a LoRA adapter into its base, then write the formats users run models in.

    chatforge export --model smollm2-135m-instruct --adapter runs/demo/adapter --output exported/demo
    chatforge export --model M --adapter A --output exported/demo --gguf q8_0 --ollama
    chatforge export --model M --adapter A --output exported/demo-int4 --quantize int4

The output folder always holds the merged model as a safetensors HF folder (loads in transformers 4.4x and 5.x, no
peft needed), its tokenizer with the trained chat template, `chatforge_export.json` (what was merged and how it was
checked) and `SHA256SUMS`; `chatforge verify DIR` re-hashes it. `--gguf TYPE` adds `model-TYPE.gguf` for llama.cpp
(chat template embedded), `--ollama` adds an Ollama `Modelfile` next to it, and `--quantize int8|int4` stores the HF
weights weight-only quantized with torchao instead of in `--dtype`.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from chatforge.errors import ChatforgeError, NotSupportedError

log = logging.getLogger(__name__)

GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_0")
QUANTIZE_TYPES = ("int8", "int4")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="chatforge export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="base model: HF folder, .gguf file or smollm2-135m-instruct")
    ap.add_argument("--adapter", help="LoRA adapter folder to merge into the base")
    ap.add_argument("--output", required=True, help="new folder for the exported model")
    ap.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="dtype of the saved weights (default: the base's)"
    )
    ap.add_argument("--gguf", choices=GGUF_TYPES, help="also write a GGUF file of this type for llama.cpp / Ollama")
    ap.add_argument("--ollama", action="store_true", help="also write an Ollama Modelfile (needs --gguf)")
    ap.add_argument("--template", help="chat template name for the Modelfile (default: found from the tokenizer)")
    ap.add_argument("--quantize", choices=QUANTIZE_TYPES, help="save the HF weights weight-only quantized (torchao)")
    ap.add_argument("--no-check", action="store_true", help="skip the merged-vs-unmerged logits check")
    args = ap.parse_args(argv)
    if args.ollama and not args.gguf:
        raise ChatforgeError("--ollama needs --gguf TYPE: the Modelfile points Ollama at the GGUF file")
    if args.quantize and args.gguf:
        raise NotSupportedError(
            "--quantize (torchao HF weights) and --gguf in one run are not supported; GGUF has its own quantized "
            "types (--gguf q8_0 / q4_0): run the export twice"
        )

    if args.quantize:  # fail before the (slow) merge when torchao is missing
        from chatforge.export.quantize import require_torchao

        require_torchao()
    from chatforge.export.merge import EXPORT_INFO, merge_model, save_hf_folder, write_folder_atomically

    model, tokenizer, report = merge_model(args.model, args.adapter, args.dtype, check=not args.no_check)
    for note in report.notes:
        log.warning("%s", note)
    info: dict = {"merge": asdict(report)}

    def fill(folder: Path) -> None:
        if args.quantize:
            import shutil

            from chatforge.export.quantize import quantize_folder

            scratch = folder / ".unquantized"
            save_hf_folder(model, tokenizer, scratch)
            quantize_folder(scratch, folder, args.quantize)
            shutil.rmtree(scratch)
            info["quantize"] = {"scheme": args.quantize, "library": "torchao"}
            (folder / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            return
        save_hf_folder(model, tokenizer, folder, info)
        if args.gguf:
            from chatforge.export.gguf import write_gguf

            gguf_path = folder / f"model-{args.gguf}.gguf"
            write_gguf(folder, gguf_path, args.gguf, name=Path(args.output).name)
            if args.ollama:
                from chatforge.export.modelfile import write_modelfile

                write_modelfile(folder / "Modelfile", gguf_path.name, tokenizer, template=args.template)

    out = write_folder_atomically(Path(args.output), fill)
    checks = []
    if report.max_diff_float32 is not None:
        checks.append(f"merged vs base+adapter max logit diff {report.max_diff_float32:.1e} (float32)")
    if report.error_saved_dtype is not None:
        checks.append(
            f"mean error vs float32 base+adapter {report.error_saved_dtype:.1e} in {report.dtype} "
            f"(base+adapter itself in {report.dtype}: {report.error_unmerged_same_dtype:.1e})"
        )
    if report.adapter:
        checks.append(f"{report.changed_modules}/{report.lora_modules} LoRA modules change the base")
    print(f"exported {out} ({report.dtype}{', ' + args.quantize if args.quantize else ''})")
    if checks:
        print("checked: " + ", ".join(checks))
    print(f"checksums in {out / 'SHA256SUMS'}; check them with: chatforge verify {out}")
    return 0
