"""The `chatforge train` run schema: the training and adapter sections, composed with the shared config sections.

A run is one YAML file (plus dotted `key=value` overrides) with the sections `model`, `data`, `template`, `peft`,
`train` and `output`; `chatforge.config.load_config` validates it against `TrainRunConfig` and reports every problem
at once. Defaults give a LoRA SFT run on the embedded SmolLM2 model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chatforge.config import DataConfig, ModelConfig, OutputConfig, TemplateConfig, load_config


@dataclass
class AdaLoraOptions:
    """`peft.adalora`: AdaLoRA's rank budget and schedule (peft `AdaLoraConfig`). `total_step` is not a key: it is
    the run's number of optimizer steps. The LoRA keys `alpha`, `dropout`, `target_modules` apply too (not `r`)."""

    init_r: int = field(default=12, metadata={"min": 1, "help": "rank every adapted matrix starts with"})
    target_r: int = field(default=8, metadata={"min": 1, "help": "average rank left after the budget phase"})
    tinit: int = field(default=0, metadata={"min": 0, "help": "optimizer steps of warm-up before ranks are cut"})
    tfinal: int = field(default=0, metadata={"min": 0, "help": "last optimizer steps trained at the final ranks"})
    deltaT: int = field(default=1, metadata={"min": 1, "help": "optimizer steps between two budget allocations"})
    beta1: float = field(default=0.85, metadata={"gt": 0, "lt": 1, "help": "EMA factor of the sensitivity"})
    beta2: float = field(default=0.85, metadata={"gt": 0, "lt": 1, "help": "EMA factor of the uncertainty"})
    orth_reg_weight: float = field(default=0.5, metadata={"min": 0, "help": "weight of the orthogonality penalty"})

    def check_config(self) -> list[tuple[str, str]]:
        if self.target_r > self.init_r:
            return [("target_r", f"{self.target_r} is above init_r ({self.init_r}): AdaLoRA only removes rank")]
        return []


@dataclass
class QLoraOptions:
    """`peft.qlora`: how the frozen base is quantised (bitsandbytes `Linear4bit`); LoRA keys as for `lora`."""

    quant_type: Literal["nf4", "fp4"] = field(default="nf4", metadata={"help": "4-bit data type of the base"})
    double_quant: bool = field(default=True, metadata={"help": "quantise the quantisation scales too"})
    compute_dtype: Literal["bfloat16", "float32", "float16"] = field(
        default="bfloat16", metadata={"help": "dtype the 4-bit weights are dequantised to for each matmul"}
    )


@dataclass
class PeftConfig:
    """Which parameters train. `finetuning`: full | freeze | lora | qlora | adalora | prefix | prompt | p_tuning
    (others raise NotSupportedError). Fields are grouped by the method that reads them; the others are ignored."""

    finetuning: str = field(
        default="lora", metadata={"help": "full | freeze | lora | qlora | adalora | prefix | prompt | p_tuning"}
    )
    # LoRA (peft). `target_modules: [all-linear]` adapts every linear layer except the output head.
    r: int = field(default=16, metadata={"min": 1, "help": "LoRA rank"})
    alpha: float = field(default=32.0, metadata={"min": 0, "help": "LoRA alpha (scale = alpha / r)"})
    dropout: float = field(default=0.05, metadata={"min": 0, "max": 1, "help": "LoRA dropout"})
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    use_dora: bool = field(default=False, metadata={"help": "weight-decomposed LoRA (DoRA), a peft flag"})
    modules_to_save: list[str] = field(default_factory=list, metadata={"help": "extra modules trained in full"})
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA: scale = alpha / sqrt(r)"})
    init_lora_weights: Literal["default", "gaussian", "pissa"] = field(
        default="default",
        metadata={"help": "LoRA init: default (B = 0), gaussian, or pissa (principal singular vectors)"},
    )
    lora_plus_ratio: float = field(
        default=0.0, metadata={"min": 0, "help": "LoRA+: lora_B matrices train at learning_rate * ratio; 0 = off"}
    )
    # Virtual-token methods (prefix = prefix tuning / P-Tuning v2, prompt = prompt tuning, p_tuning = prompt encoder).
    num_virtual_tokens: int = field(default=16, metadata={"min": 1, "help": "prefix | prompt | p_tuning: length"})
    prompt_init_text: str | None = field(
        default=None, metadata={"help": "prompt: initialise the soft tokens from this text's embeddings"}
    )
    encoder_type: Literal["MLP", "LSTM"] = field(default="MLP", metadata={"help": "p_tuning: the prompt encoder"})
    encoder_hidden_size: int = field(default=128, metadata={"min": 1, "help": "p_tuning: encoder hidden size"})
    prefix_projection: bool = field(
        default=False, metadata={"help": "prefix: reparametrise the prefix through an MLP while training"}
    )
    # freeze: train only the last (or first) `freeze_layers` decoder layers, plus any `trainable_modules` by name.
    freeze_layers: int = field(default=2, metadata={"min": 0, "help": "number of decoder layers left trainable"})
    freeze_side: Literal["last", "first"] = "last"
    trainable_modules: list[str] = field(
        default_factory=list, metadata={"help": "parameter-name substrings also trained in freeze mode, e.g. lm_head"}
    )
    adalora: AdaLoraOptions = field(default_factory=AdaLoraOptions)
    qlora: QLoraOptions = field(default_factory=QLoraOptions)


@dataclass
class TrainConfig:
    """The optimisation loop. Steps are optimizer steps (one step = `grad_accum` micro-batches)."""

    stage: Literal["sft", "pt", "dpo"] = "sft"
    epochs: float = field(default=1.0, metadata={"min": 0})
    max_steps: int | None = field(default=None, metadata={"min": 1, "help": "overrides epochs when set"})
    batch_size: int = field(default=4, metadata={"min": 1, "help": "sequences (or packed rows) per micro-batch"})
    grad_accum: int = field(default=1, metadata={"min": 1})
    learning_rate: float = field(default=2e-4, metadata={"min": 0, "max": 10})
    weight_decay: float = field(default=0.0, metadata={"min": 0})
    adam_beta1: float = field(default=0.9, metadata={"min": 0, "max": 1})
    adam_beta2: float = field(default=0.999, metadata={"min": 0, "max": 1})
    adam_eps: float = field(default=1e-8, metadata={"min": 0})
    fused_optimizer: bool = field(default=True, metadata={"help": "fused AdamW where the device supports it"})
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = field(default=0, metadata={"min": 0})
    warmup_ratio: float = field(default=0.0, metadata={"min": 0, "max": 1, "help": "used when warmup_steps is 0"})
    max_grad_norm: float = field(default=1.0, metadata={"min": 0, "help": "0 disables clipping"})
    precision: Literal["auto", "fp32", "bf16"] = field(
        default="auto",
        metadata={"help": "bf16 = autocast (bf16 maths over the weights' dtype); auto = bf16 on CUDA, fp32 on CPU"},
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "HF activation checkpointing, all layers"})
    # Speed switches (chatforge.training.speedups); each turns itself off where it cannot apply (e.g. on CPU).
    checkpoint_ratio: float = field(default=0.0, metadata={"min": 0, "max": 1, "help": "share of layers recomputed"})
    compile_layers: bool = field(default=False, metadata={"help": "torch.compile each decoder layer (CUDA)"})
    liger: bool = field(default=False, metadata={"help": "Liger RMSNorm/RoPE/SwiGLU kernels (CUDA + liger_kernel)"})
    seed: int = 0
    batching: Literal["length_grouped", "packed", "random"] = "length_grouped"
    attention: Literal["auto", "mask", "flex"] = field(
        default="auto",
        metadata={
            "help": "packed rows: 4D block-diagonal mask (any device) or FlexAttention document mask (CUDA); "
            "auto = flex on CUDA, mask elsewhere"
        },
    )
    num_threads: int | None = field(default=None, metadata={"min": 1, "help": "torch CPU threads"})
    log_every: int = field(default=1, metadata={"min": 1})
    eval_every: int = field(default=0, metadata={"min": 0, "help": "validation every N steps; 0 = only at the end"})
    eval_batch_size: int = field(default=8, metadata={"min": 1})
    save_every: int = field(default=0, metadata={"min": 0, "help": "checkpoint every N steps; 0 = none"})
    save_total_limit: int = field(default=2, metadata={"min": 1, "help": "keep the last K checkpoints"})
    resume: str | None = field(default=None, metadata={"help": "auto | a checkpoint folder | null"})
    early_stopping_patience: int = field(default=0, metadata={"min": 0, "help": "evals without improvement; 0 = off"})
    early_stopping_min_delta: float = field(default=0.0, metadata={"min": 0})
    loss_chunk_size: int = field(default=4096, metadata={"min": 1, "help": "tokens per chunk of the output-head loss"})
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata={
            "min": 1,
            "help": "padded batches: round lengths up to this (fewer shapes to compile); null = 64 on CUDA",
        },
    )
    peak_tflops: float | None = field(
        default=None, metadata={"gt": 0, "help": "accelerator peak (bf16 dense) for MFU; null = known GPUs only"}
    )
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard events when tensorboard is installed"})
    progress: bool = True


@dataclass
class DpoConfig:
    """`train.stage: dpo`: the preference loss on chosen/rejected pairs (see `training.preference`)."""

    loss: Literal["sigmoid", "ipo", "hinge", "orpo", "simpo"] = field(
        default="sigmoid", metadata={"help": "sigmoid (DPO) | ipo | hinge (SLiC) | orpo | simpo"}
    )
    beta: float = field(
        default=0.1,
        metadata={
            "gt": 0,
            "help": "DPO/IPO/hinge temperature; ORPO: weight of the odds-ratio term; SimPO: reward scale",
        },
    )
    label_smoothing: float = field(
        default=0.0, metadata={"min": 0, "max": 0.5, "help": "sigmoid and simpo: assumed share of flipped labels"}
    )
    simpo_gamma: float = field(default=0.5, metadata={"min": 0, "help": "SimPO target reward margin"})


@dataclass
class TrainRunConfig:
    """Everything one `chatforge train` run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainRunConfig:
    """Read and validate a training YAML (+ `key=value` overrides); raises ConfigError listing every problem."""
    return load_config(path, list(overrides or []), TrainRunConfig)
