"""LLaMA-Factory training YAMLs in chatforge: recognise one, map its keys to chatforge's run config, say what is left.

    chatforge config from-llamafactory lf.yaml [-o run.yaml]     # writes the equivalent chatforge YAML

`from_llamafactory(dict) -> (chatforge_dict, [(key, reason), ...])` is the mapping itself; `maybe_convert(path)` is
what `chatforge train lf.yaml` calls: it returns a converted YAML's path (plus the unmapped keys) for an LLaMA-Factory
file and any other path unchanged. Every key is either mapped or listed with the reason it is not; keys
that would change what a run means (a DPO stage, QLoRA bits) are refused with NotSupportedError instead of being
dropped, so a converted run never silently trains something else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from chatforge.errors import ChatforgeError, NotSupportedError

# Keys LLaMA-Factory uses for bookkeeping that have no effect on what chatforge trains, with why.
_IGNORED = {
    "do_train": "chatforge train always trains",
    "overwrite_cache": "chatforge's tokenization cache is keyed by data, tokenizer and template: it never goes stale",
    "preprocessing_num_workers": "chatforge picks tokenization workers itself",
    "dataloader_num_workers": "chatforge's batches come from memory; no loader workers",
    "plot_loss": "chatforge writes metrics.jsonl (and TensorBoard events); plot them from there",
    "ddp_timeout": "no distributed training in chatforge yet",
    "save_only_model": "chatforge checkpoints always hold optimizer state for an exact resume",
    "flash_attn": "chatforge uses PyTorch SDPA (train.attention picks the packed-row mask)",
    "logging_first_step": "chatforge logs every train.log_every steps from step 1",
    "report_to": "",  # handled below
}

_STAGES = {"sft": "sft", "pt": "pt"}
_STAGES.update({"rm": "rm", "dpo": "dpo", "kto": "kto"})  # preference stages
# LLaMA-Factory's pref_loss for stage dpo -> chatforge's dpo.loss (kto_pair has no chatforge equivalent).
_PREF_LOSSES = {"sigmoid": "sigmoid", "ipo": "ipo", "hinge": "hinge", "orpo": "orpo", "simpo": "simpo"}
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant", "constant_with_warmup": "constant"}
_FINETUNING = ("lora", "full", "freeze")


def is_llamafactory_config(data: Any) -> bool:
    """An LLaMA-Factory training YAML: flat keys with `model_name_or_path` and a method or stage key."""
    if not isinstance(data, dict) or not isinstance(data.get("model_name_or_path"), str):
        return False
    return any(k in data for k in ("stage", "finetuning_type", "do_train", "template", "dataset"))


def _preference_key(key: str, value: Any, stage: str, num, put, unmapped: list) -> None:
    """The preference-stage keys (pref_beta, pref_loss, pref_ftx, dpo_label_smoothing, simpo_gamma, kto_*)."""
    if stage not in ("dpo", "kto"):
        unmapped.append((key, f"a preference-loss key; stage {stage} does not use it"))
    elif key == "pref_beta":
        put(stage, "beta", num(key))
    elif key == "pref_loss" and stage == "dpo":
        if value not in _PREF_LOSSES:
            raise NotSupportedError(f"pref_loss={value!r}: chatforge's dpo.loss is one of {', '.join(_PREF_LOSSES)}")
        put("dpo", "loss", _PREF_LOSSES[value])
    elif key == "pref_loss":
        unmapped.append((key, "stage kto has one loss"))
    elif key == "pref_ftx" or key == "pref_bco_weight":
        if num(key):
            raise NotSupportedError(f"{key}={value}: an added SFT / BCO loss term is not supported; set it to 0")
        unmapped.append((key, "0: nothing to add"))
    elif key == "dpo_label_smoothing" and stage == "dpo":
        put("dpo", "label_smoothing", num(key))
    elif key == "simpo_gamma" and stage == "dpo":
        put("dpo", "simpo_gamma", num(key))
    elif key == "kto_chosen_weight" and stage == "kto":
        put("kto", "desirable_weight", num(key))
    elif key == "kto_rejected_weight" and stage == "kto":
        put("kto", "undesirable_weight", num(key))
    else:
        unmapped.append((key, f"no chatforge equivalent for stage {stage}"))


def _split(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _number(value: Any, kind=float):
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return kind(float(value)) if kind is int else kind(value)


def from_llamafactory(lf: dict) -> tuple[dict, list[tuple[str, str]]]:
    """Map an LLaMA-Factory training config (a flat dict) to chatforge's nested run config.

    Returns (chatforge_dict, unmapped) where unmapped lists (key, reason) for every key not carried over. Raises
    NotSupportedError for keys whose meaning chatforge cannot honour (other stages, quantized training, ...), and
    ChatforgeError for values of the wrong type."""
    if not isinstance(lf, dict):
        raise ChatforgeError("an LLaMA-Factory config is a YAML mapping of key: value")
    out: dict[str, dict] = {s: {} for s in ("model", "data", "template", "peft", "train", "dpo", "kto", "output")}
    unmapped: list[tuple[str, str]] = []
    problems: list[str] = []

    def put(section: str, key: str, value: Any) -> None:
        out[section][key] = value

    def num(key: str, kind=float):
        try:
            return _number(lf[key], kind)
        except (TypeError, ValueError):
            problems.append(f"{key}: expected a number, got {lf[key]!r}")
            return None

    stage = str(lf.get("stage", "sft"))
    if stage not in _STAGES:
        raise NotSupportedError(
            f"LLaMA-Factory stage {stage!r}: chatforge train runs stages {', '.join(_STAGES)} (ppo is not "
            "implemented); converting it would silently train something else"
        )
    quant = lf.get("quantization_bit")
    if quant not in (None, "", "none"):
        raise NotSupportedError(f"quantization_bit={quant}: QLoRA (quantized base weights) is not supported")

    for key, value in lf.items():
        if value is None and key != "resume_from_checkpoint":
            continue  # LLaMA-Factory's "unset"
        if key == "model_name_or_path":
            put("model", "name_or_path", str(value))
        elif key == "adapter_name_or_path":
            adapters = _split(value)
            if len(adapters) == 1:
                put("model", "adapter", adapters[0])
            else:
                unmapped.append((key, "chatforge continues one adapter; merge the others first (chatforge export)"))
        elif key == "trust_remote_code":
            put("model", "trust_remote_code", bool(value))
        elif key == "stage":
            put("train", "stage", _STAGES[stage])
        elif key == "finetuning_type":
            if value not in _FINETUNING:
                raise NotSupportedError(f"finetuning_type={value!r}: chatforge supports {', '.join(_FINETUNING)}")
            put("peft", "finetuning", value)
        elif key == "lora_rank":
            put("peft", "r", num(key, int))
        elif key == "lora_alpha":
            put("peft", "alpha", num(key))
        elif key == "lora_dropout":
            put("peft", "dropout", num(key))
        elif key == "lora_target":
            targets = _split(value)
            put("peft", "target_modules", ["all-linear"] if targets == ["all"] else targets)
        elif key == "additional_target":
            put("peft", "modules_to_save", _split(value))
        elif key == "use_dora":
            put("peft", "use_dora", bool(value))
        elif key == "freeze_trainable_layers":
            n = num(key, int)
            if n is not None:
                put("peft", "freeze_layers", abs(n))
                put("peft", "freeze_side", "last" if n > 0 else "first")
        elif key == "freeze_extra_modules":
            put("peft", "trainable_modules", _split(value))
        elif key == "freeze_trainable_modules":
            if _split(value) != ["all"]:
                unmapped.append((key, "chatforge's freeze mode trains whole layers (plus peft.trainable_modules)"))
        elif key in ("dataset", "eval_dataset"):
            put("data", "train" if key == "dataset" else "val", _split(value))
        elif key == "dataset_dir":
            pass  # handled with `dataset` below
        elif key == "template":
            from chatforge.templates import get_template

            try:
                put("template", "name", get_template(str(value)).name)
            except ChatforgeError as err:
                unmapped.append((key, f"{err}; chatforge will pick the template from the model"))
        elif key == "default_system":
            put("template", "default_system", str(value))
        elif key == "cutoff_len":
            put("data", "max_length", num(key, int))
        elif key == "max_samples":
            put("data", "max_samples", num(key, int))
        elif key == "val_size":
            size = num(key)
            if size is not None and size >= 1:
                unmapped.append((key, f"{value} is a count; chatforge's data.val_size is a fraction below 1"))
            elif size:
                put("data", "val_size", size)
        elif key == "per_device_train_batch_size":
            put("train", "batch_size", num(key, int))
        elif key == "per_device_eval_batch_size":
            put("train", "eval_batch_size", num(key, int))
        elif key == "gradient_accumulation_steps":
            put("train", "grad_accum", num(key, int))
        elif key in ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm", "warmup_ratio"):
            put("train", key, num(key))
        elif key == "adam_epsilon":
            put("train", "adam_eps", num(key))
        elif key == "warmup_steps":
            put("train", "warmup_steps", num(key, int))
        elif key == "lr_scheduler_type":
            if value not in _SCHEDULERS:
                unmapped.append((key, f"{value!r}: chatforge schedules {', '.join(sorted(set(_SCHEDULERS.values())))}"))
            else:
                put("train", "scheduler", _SCHEDULERS[value])
        elif key == "num_train_epochs":
            put("train", "epochs", num(key))
        elif key == "max_steps":
            steps = num(key, int)
            if steps is not None and steps > 0:
                put("train", "max_steps", steps)
        elif key in ("bf16", "pure_bf16"):
            if value:
                put("train", "precision", "bf16")
                if key == "pure_bf16":
                    unmapped.append((key, "chatforge's bf16 is autocast over fp32 master weights, not bf16 weights"))
        elif key == "fp16":
            if value:
                unmapped.append((key, "chatforge trains in fp32 or bf16 (train.precision); fp16 is not supported"))
        elif key == "gradient_checkpointing":
            put("train", "gradient_checkpointing", bool(value))
        elif key == "disable_gradient_checkpointing":
            put("train", "gradient_checkpointing", not value)
        elif key == "enable_liger_kernel":
            put("train", "liger", bool(value))
        elif key == "seed":
            put("train", "seed", num(key, int))
            put("data", "seed", num(key, int))
        elif key == "logging_steps":
            put("train", "log_every", num(key, int))
        elif key == "save_steps":
            put("train", "save_every", num(key, int))
        elif key == "eval_steps":
            put("train", "eval_every", num(key, int))
        elif key == "save_total_limit":
            put("train", "save_total_limit", num(key, int))
        elif key in ("eval_strategy", "evaluation_strategy", "save_strategy"):
            if value == "no":
                put("train", "eval_every" if key != "save_strategy" else "save_every", 0)
            elif value != "steps":
                unmapped.append(
                    (key, f"{value!r}: chatforge evaluates and saves every N steps (eval_every/save_every)")
                )
        elif key == "output_dir":
            put("output", "dir", str(value))
        elif key == "overwrite_output_dir":
            put("output", "overwrite", bool(value))
        elif key == "resume_from_checkpoint":
            if value is True:
                put("train", "resume", "auto")
            elif value not in (None, False, ""):
                put("train", "resume", str(value))
        elif key in ("packing", "neat_packing"):
            if value:
                # chatforge's packed rows never attend across examples: LLaMA-Factory's neat_packing.
                put("train", "batching", "packed")
        elif key == "report_to":
            targets = _split(value) if value else []
            if targets in ([], ["none"]):
                put("train", "tensorboard", False)
            elif "tensorboard" in targets:
                put("train", "tensorboard", True)
                if len(targets) > 1:
                    unmapped.append((key, "chatforge reports to TensorBoard only"))
            else:
                unmapped.append((key, f"{value}: chatforge reports to metrics.jsonl and TensorBoard only"))
        elif key.startswith(("pref_", "dpo_", "simpo_", "kto_")):
            _preference_key(key, value, stage, num, put, unmapped)
        elif key in _IGNORED:
            unmapped.append((key, _IGNORED[key]))
        else:
            unmapped.append((key, "no chatforge equivalent"))

    if "dataset" in lf or "eval_dataset" in lf:
        folder = str(lf.get("dataset_dir") or "data")
        put("data", "dataset_info", str(Path(folder) / "dataset_info.json"))
    elif "dataset_dir" in lf:
        unmapped.append(("dataset_dir", "no `dataset` names to look up in it"))
    if lf.get("lr_scheduler_type") == "constant":
        # LLaMA-Factory's plain constant schedule has no warmup; chatforge's constant warms up when asked.
        for key in ("warmup_ratio", "warmup_steps"):
            if out["train"].pop(key, None):
                unmapped.append((key, "lr_scheduler_type=constant has no warmup (use constant_with_warmup)"))
    if problems:
        raise ChatforgeError(f"{len(problems)} problem(s) in the LLaMA-Factory config:\n  " + "\n  ".join(problems))
    return {k: v for k, v in out.items() if v}, unmapped


def convert_file(path: str | Path) -> tuple[dict, list[tuple[str, str]]]:
    p = Path(path)
    if not p.is_file():
        raise ChatforgeError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ChatforgeError(f"{p}: not valid YAML ({err})") from None
    if not is_llamafactory_config(data):
        raise ChatforgeError(
            f"{p} does not look like an LLaMA-Factory training config (expected model_name_or_path and stage / "
            "finetuning_type keys)"
        )
    return from_llamafactory(data)


def maybe_convert(path: str | Path | None, workdir: str | Path | None = None) -> tuple[Path | None, list]:
    """For `chatforge train PATH`: an LLaMA-Factory YAML is converted to a chatforge YAML (written in `workdir`, a
    temporary folder by default) and that path returned with the unmapped keys; any other path comes back as is."""
    if path is None:
        return None, []
    p = Path(path)
    if not p.is_file():
        return p, []
    from chatforge.config import ConfigError, _read_yaml

    try:
        data, _ = _read_yaml(p)  # the bounded reader: no alias bombs, nesting or huge numbers get through
    except ConfigError:
        return p, []  # the config loader reports it
    if not is_llamafactory_config(data):
        return p, []
    cfg, unmapped = from_llamafactory(data)
    if workdir is None:
        import tempfile

        workdir = tempfile.mkdtemp(prefix="chatforge-lf-")
    out = Path(workdir) / (p.stem + ".chatforge.yaml")
    out.write_text(to_yaml(cfg, unmapped, str(p)), encoding="utf-8")
    return out, unmapped


def to_yaml(cfg: dict, unmapped: list[tuple[str, str]], source: str) -> str:
    lines = [f"# chatforge train {Path(source).with_suffix('').name}.chatforge.yaml", f"# converted from {source}"]
    if unmapped:
        lines.append("# not carried over:")
        lines += [f"#   {key}: {reason}" for key, reason in unmapped]
    return "\n".join(lines) + "\n" + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chatforge config",
        description="Convert run configs. from-llamafactory: an LLaMA-Factory training YAML to a chatforge one.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    conv = sub.add_parser("from-llamafactory", help="write the chatforge YAML equivalent of an LLaMA-Factory YAML")
    conv.add_argument("config", help="LLaMA-Factory training YAML (e.g. examples/train_lora/llama3_lora_sft.yaml)")
    conv.add_argument("-o", "--output", help="where to write the chatforge YAML (default: print it)")
    args = parser.parse_args(argv)
    cfg, unmapped = convert_file(args.config)
    text = to_yaml(cfg, unmapped, args.config)
    check_chatforge_yaml(text, args.config)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}: {sum(len(v) for v in cfg.values())} keys mapped, {len(unmapped)} not carried over")
        for key, reason in unmapped:
            print(f"  {key}: {reason}")
    else:
        sys.stdout.write(text)
    return 0


def check_chatforge_yaml(text: str, source: str) -> None:
    """The converted YAML must be a valid `chatforge train` config (ConfigError listing the problems otherwise)."""
    import tempfile

    from chatforge.config import load_config
    from chatforge.training.config import TrainRunConfig

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (Path(source).stem + ".chatforge.yaml")
        path.write_text(text, encoding="utf-8")
        load_config(path, [], TrainRunConfig)
