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

    stage: Literal[
        "sft",
        "pt",
        "dpo",
        "grpo",  # online RL with Python rewards (training.recipes.grpo)
        "rm",  # reward model (training.recipes.rm)
        "kto",  # KTO on unpaired desirable / undesirable replies (training.recipes.kto)
    ] = "sft"
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
            "auto = flex on CUDA, mask elsewhere (pt shards with data.document_mask=false: plain causal, no mask)"
        },
    )
    num_threads: int | None = field(default=None, metadata={"min": 1, "help": "torch CPU threads"})
    log_every: int = field(default=1, metadata={"min": 1})
    eval_every: int = field(default=0, metadata={"min": 0, "help": "validation every N steps; 0 = only at the end"})
    eval_batch_size: int = field(default=8, metadata={"min": 1})
    sample_prompts: list[str] = field(
        default_factory=list,
        metadata={"help": "prompts to generate from (greedy) at every validation, into samples.jsonl"},
    )
    sample_max_new_tokens: int = field(default=48, metadata={"min": 1, "help": "tokens per sample"})
    save_every: int = field(default=0, metadata={"min": 0, "help": "checkpoint every N steps; 0 = none"})
    save_total_limit: int = field(default=2, metadata={"min": 1, "help": "keep the last K checkpoints"})
    resume: str | None = field(default=None, metadata={"help": "auto | a checkpoint folder | null"})
    early_stopping_patience: int = field(default=0, metadata={"min": 0, "help": "evals without improvement; 0 = off"})
    early_stopping_min_delta: float = field(default=0.0, metadata={"min": 0})
    restore_best: bool = field(
        default=False,
        metadata={"help": "keep the best-validation weights in checkpoints/best/ and save those at the end"},
    )
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
    # Multi-process training under torchrun (`training.distributed`); batch_size is per process, the global batch is
    # batch_size x processes. Without torchrun these are ignored.
    distributed: Literal["auto", "ddp", "fsdp2"] = field(
        default="auto", metadata={"help": "under torchrun: ddp (replicated) | fsdp2 (sharded); auto = ddp"}
    )
    dist_timeout_s: float = field(
        default=600.0,
        metadata={"gt": 0, "help": "seconds a collective waits for the other ranks before the run fails"},
    )
    fsdp_cpu_offload: bool = field(default=False, metadata={"help": "fsdp2: keep parameter shards in CPU memory"})


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
class GrpoConfig:
    """`train.stage: grpo`: online RL with rewards written in Python (see `training.grpo`, `training.rewards`).

    One step: `train.batch_size` prompts per micro-batch, each sampled `num_generations` times by the current
    policy; rewards -> group-normalised advantages -> clipped surrogate (+ beta * KL to the reference)."""

    num_generations: int = field(default=4, metadata={"min": 2, "help": "completions sampled per prompt (G)"})
    max_new_tokens: int = field(default=128, metadata={"min": 1, "help": "completion length limit (tokens)"})
    temperature: float = field(default=1.0, metadata={"gt": 0, "help": "sampling temperature (also scales logps)"})
    top_p: float = field(default=1.0, metadata={"gt": 0, "max": 1, "help": "nucleus sampling"})
    top_k: int = field(default=0, metadata={"min": 0, "help": "top-k sampling; 0 = off"})
    beta: float = field(default=0.04, metadata={"min": 0, "help": "KL weight to the reference (k3); 0 = no KL"})
    epsilon: float = field(default=0.2, metadata={"gt": 0, "help": "clip range: ratio in [1 - eps, 1 + eps_high]"})
    epsilon_high: float | None = field(default=None, metadata={"gt": 0, "help": "upper clip (DAPO); null = epsilon"})
    num_iterations: int = field(
        default=1, metadata={"min": 1, "help": "policy updates per generation batch (mu); >1 reuses the samples"}
    )
    loss_type: Literal["grpo", "bnpo", "dr_grpo"] = field(
        default="grpo",
        metadata={
            "help": "grpo: token mean per completion, then mean; bnpo: token mean over the micro-batch; "
            "dr_grpo: token sum / (completions x max_new_tokens)"
        },
    )
    scale_rewards: bool = field(default=True, metadata={"help": "divide advantages by the group std (off: Dr. GRPO)"})
    std_floor: float = field(default=1e-4, metadata={"gt": 0, "help": "the group std is at least this"})
    rewards: list[str] = field(
        default_factory=list,
        metadata={"help": "reward functions: built-in names, module.path:function or path/file.py:function"},
    )
    reward_weights: list[float] = field(default_factory=list, metadata={"help": "one weight per reward; [] = all 1"})
    format_pattern: str | None = field(default=None, metadata={"help": "built-in `format`: regex a reply must match"})
    length_limit: int = field(
        default=512, metadata={"min": 1, "help": "built-in `length_penalty`: characters before the penalty starts"}
    )
    refusal_patterns: list[str] = field(
        default_factory=list, metadata={"help": "built-in `grounded_qa`: extra refusal regexes (as eval's)"}
    )
    eval_max_new_tokens: int | None = field(
        default=None, metadata={"min": 1, "help": "validation (greedy) completion limit; null = max_new_tokens"}
    )

    def check_config(self) -> list[tuple[str, str]]:
        problems = []
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            problems.append(
                ("reward_weights", f"{len(self.reward_weights)} weights for {len(self.rewards)} reward functions")
            )
        return problems


@dataclass
class RmConfig:
    """`train.stage: rm`: the reward model's pairwise loss (see `training.reward`)."""

    margin: float = field(
        default=0.0,
        metadata={
            "help": "Bradley-Terry margin m in -log s(score_chosen - score_rejected - m); a pair's own `margin` "
            "field, when the data has one, wins"
        },
    )


@dataclass
class KtoConfig:
    """`train.stage: kto`: the KTO loss on desirable / undesirable replies (see `training.kto`)."""

    beta: float = field(default=0.1, metadata={"gt": 0, "help": "scale of the implied reward beta*log(pi/ref)"})
    desirable_weight: float = field(default=1.0, metadata={"gt": 0, "help": "lambda_D: weight of desirable replies"})
    undesirable_weight: float = field(
        default=1.0, metadata={"gt": 0, "help": "lambda_U: weight of undesirable replies"}
    )


@dataclass
class TrainRunConfig:
    """Everything one `chatforge train` run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    rm: RmConfig = field(default_factory=RmConfig)  # stage rm
    kto: KtoConfig = field(default_factory=KtoConfig)  # stage kto
    output: OutputConfig = field(default_factory=OutputConfig)

    def check_config(self) -> list[tuple[str, str]]:
        problems = []
        if not self.data.document_mask:
            # Only shard rows span several documents: pt on files cuts each document into its own blocks and sft
            # packing must keep its samples apart, so there is nothing the switch could turn off anywhere else.
            if self.train.stage != "pt" or not self.data.shards:
                problems.append(
                    (
                        "data.document_mask",
                        f"false applies only to train.stage=pt with data.shards (got train.stage={self.train.stage}"
                        f"{'' if self.data.shards else ', no data.shards'}); leave it true",
                    )
                )
            elif self.train.attention != "auto":
                # Rows without document masking use plain causal attention (SDPA is_causal); neither a 4D mask nor
                # a FlexAttention BlockMask has anything to keep apart.
                problems.append(
                    (
                        "train.attention",
                        f"{self.train.attention} keeps documents apart, but data.document_mask=false trains each row "
                        "with plain causal attention: leave train.attention=auto",
                    )
                )
        return problems


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainRunConfig:
    """Read and validate a training YAML (+ `key=value` overrides); raises ConfigError listing every problem."""
    return load_config(path, list(overrides or []), TrainRunConfig)
