"""Sub-configs shared by every stage, so that a setting has one name everywhere (`optimizer.lr` in pretrain, SFT,
the reward model and PPO alike). Pure dataclasses: this package imports no torch and no transformers."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from prefer.errors import PreferError

PRECISIONS = ("auto", "fp32", "bf16")
PARALLEL = ("ddp", "fsdp")  # under torchrun: DistributedDataParallel or FSDP2 (fully_shard); see docs/distributed.md
ENDPOINT_APIS = ("completions", "chat")
TRACKERS = ("tensorboard", "trackio", "mlflow", "wandb")  # where metrics go besides metrics.jsonl (docs/trackers.md)


def check(condition: bool, field_name: str, message: str) -> None:
    """Raise the one-line config error naming the dotted field."""
    if not condition:
        raise PreferError(f"config: {field_name}: {message}")


def non_finite(values: Any, prefix: str = "") -> tuple[str, float] | None:
    """(dotted key, value) of the first float that is inf, -inf or nan in nested mappings, sequences and dataclasses;
    None when every number is finite. Every number of every config must be finite: a range check such as `lr > 0`
    lets inf through (a run of NaN weights), and nan fails every comparison with a misleading message."""
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        values = {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}
    if isinstance(values, dict):
        items = ((f"{prefix}{key}", value) for key, value in values.items())
    elif isinstance(values, (list, tuple)):
        items = ((f"{prefix.removesuffix('.')}[{i}]", value) for i, value in enumerate(values))
    else:
        return None
    for key, value in items:
        if isinstance(value, float) and not math.isfinite(value):
            return key, value
        found = non_finite(value, f"{key}.")
        if found is not None:
            return found
    return None


def check_finite(config: Any, section: str = "") -> None:
    """PreferError naming the first non-finite number of `config` (a dataclass or nested mapping) under `section`."""
    found = non_finite(config, f"{section}." if section else "")
    if found is not None:
        key, value = found
        raise PreferError(f"config: {key}: {value} is not a finite number")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW (matrices decay, biases and norms do not) and gradient clipping."""

    lr: float | None = None  # peak learning rate; None = the stage's default (pretrain: the task's paper value)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm

    def __post_init__(self):
        check_finite(self, "optimizer")
        check(self.lr is None or self.lr > 0, "optimizer.lr", "must be positive (and finite)")
        check(self.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
        check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optimizer.beta1", "betas must be in [0, 1)")
        check(self.grad_clip > 0, "optimizer.grad_clip", "must be positive")


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warmup to the peak learning rate, then linear decay (Korbak et al. 2023)."""

    warmup_fraction: float = 0.01  # of the steps
    min_lr_fraction: float = 0.1  # linear decay to this fraction of the peak

    def __post_init__(self):
        check_finite(self, "schedule")
        check(0 <= self.warmup_fraction < 1, "schedule.warmup_fraction", "must be in [0, 1)")
        check(0 <= self.min_lr_fraction <= 1, "schedule.min_lr_fraction", "must be in [0, 1]")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a training stage runs; none of it changes what is computed except the seed (and precision)."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    parallel: str = "ddp"  # under torchrun: ddp (whole model on each rank) | fsdp (FSDP2: weights, optimizer sharded)
    progress: bool = True  # progress bars
    # recompute each block's activations in the backward pass (HF models): less memory, one more forward per step
    gradient_checkpointing: bool = False
    # pretrain on CPU: freed memory stays in the process for the next step's tensors (glibc; see keep_freed_memory)
    keep_freed_memory: bool = True
    # experiment trackers that receive every logged scalar, the sample tables and the config (rank 0 only):
    # any of tensorboard, trackio, mlflow, wandb; [] = metrics.jsonl only (docs/trackers.md)
    trackers: list[str] = dataclasses.field(default_factory=lambda: ["tensorboard"])

    def __post_init__(self):
        check(self.precision in PRECISIONS, "runtime.precision", f"choose one of {', '.join(PRECISIONS)}")
        check(self.parallel in PARALLEL, "runtime.parallel", f"choose one of {', '.join(PARALLEL)}")
        unknown = [name for name in self.trackers if name not in TRACKERS]
        named = ", ".join(map(repr, unknown))
        check(not unknown, "runtime.trackers", f"unknown tracker {named}: choose from {', '.join(TRACKERS)}")
        check(len(set(self.trackers)) == len(self.trackers), "runtime.trackers", "names a tracker twice")


@dataclass(frozen=True)
class InferenceRuntimeConfig:
    """Where a command that samples but trains nothing runs (`label`, `evaluate`, `redteam`; `rlhf` hands its seed
    and device to every stage): the keys of RuntimeConfig such a command reads, under the same names and defaults.
    The training-only keys (precision, parallel, checkpointing, trackers) are not keys here, so setting one is an
    unknown-key error rather than a setting that silently does nothing."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True  # progress bars


@dataclass(frozen=True)
class SamplingConfig:
    """How samples are drawn for evaluation (the paper: 128 tokens, temperature 0.7, top-p 0.9)."""

    num_samples: int = 512  # unprompted samples drawn and scored
    max_new_tokens: int = 128  # the length of a sample, at most
    temperature: float = 0.7  # 0 = greedy decoding
    top_p: float = 0.9  # nucleus sampling (control tokens keep their own probability); 1 = off
    prompt: str = "auto"  # auto = `<|good|>` for conditional models, nothing for others; or none | good | bad
    # auto = block `<|bad|>` for conditional models prompted good, `<|good|>` prompted bad, both tags for others;
    # or none | bad | good | both
    block: str = "auto"
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self):
        check_finite(self, "sampling")
        check(self.num_samples > 0, "sampling.num_samples", "must be positive")
        check(self.max_new_tokens > 0, "sampling.max_new_tokens", "must be positive")
        check(self.temperature >= 0, "sampling.temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "sampling.top_p", "must be in (0, 1]")
        check(self.prompt in ("auto", "none", "good", "bad"), "sampling.prompt", "choose auto | none | good | bad")
        check(
            self.block in ("auto", "none", "bad", "good", "both"),
            "sampling.block",
            "choose auto | none | bad | good | both",
        )
        check(self.batch_size > 0, "sampling.batch_size", "must be positive")


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings of a model that writes text for another stage (labelers' responses, red-team prompts)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0

    def check(self, where: str) -> None:
        """Called by the config that holds it, which knows its dotted name (`where`)."""
        check_finite(self, where)
        check(self.max_new_tokens > 0, f"{where}.max_new_tokens", "must be positive")
        check(self.temperature >= 0, f"{where}.temperature", "must be >= 0")
        check(0 < self.top_p <= 1, f"{where}.top_p", "must be in (0, 1]")


@dataclass(frozen=True)
class KLConfig:
    """The per-token KL penalty to the frozen reference, beta of Ouyang et al. 2022, Eq. 2."""

    coef: float = 0.02  # beta; the starting value when `target` is set
    target: float | None = None  # adaptive KL controller (Ziegler et al. 2019) when set, in nats per episode
    horizon: float = 10_000  # controller horizon, in episodes

    def __post_init__(self):
        check_finite(self, "kl")
        check(self.coef >= 0, "kl.coef", "must be >= 0")
        check(self.target is None or self.target > 0, "kl.target", "must be > 0")
        check(self.horizon > 0, "kl.horizon", "must be positive")


@dataclass(frozen=True)
class PTXConfig:
    """PPO-ptx: gamma x the log-likelihood of pretraining data added to the objective (Ouyang et al. 2022, Eq. 2)."""

    coef: float = 0.0  # gamma (the paper: 27.8); 0 = plain PPO
    source: str | None = None  # pretraining corpus (stdlib | changelogs | DIR | FILE.jsonl); required with coef > 0
    batch_size: int = 8  # pretraining blocks per optimizer step
    max_bytes: int | None = 1_000_000  # deterministic subset of the corpus
    eval_blocks: int = 32  # held-out pretraining blocks for the logged LM loss (the alignment tax)

    def __post_init__(self):
        check_finite(self, "ptx")
        check(self.coef >= 0, "ptx.coef", "must be >= 0")
        check(self.coef == 0 or self.source is not None, "ptx.source", "required when ptx.coef > 0")
        check(self.batch_size > 0 and self.eval_blocks > 0, "ptx.batch_size", "block counts must be positive")
        check(self.max_bytes is None or self.max_bytes > 0, "ptx.max_bytes", "must be positive")


@dataclass(frozen=True)
class EndpointConfig:
    """An OpenAI-compatible server (completions or chat API); its API key only from an environment variable."""

    url: str | None = None  # API root, e.g. http://127.0.0.1:8000/v1; None = no endpoint
    model: str = ""  # the server's model name
    api: str = "completions"  # completions | chat
    timeout: float = 60.0  # seconds per request
    api_key_env: str | None = None  # NAME of the environment variable holding the API key (never the key itself)

    def __post_init__(self):
        check_finite(self, "endpoint")
        check(self.url is None or bool(self.model), "endpoint.model", "the server's model name is required with url")
        check(self.api in ENDPOINT_APIS, "endpoint.api", f"choose one of {', '.join(ENDPOINT_APIS)}")
        check(self.timeout > 0, "endpoint.timeout", "must be positive")


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021) through `peft`: the pretrained weights stay frozen, only the adapters (and
    a reward or value head) train; the saved `final/` model has them merged into plain Hugging Face weights."""

    r: int = 0  # rank of the adapters; 0 = LoRA off (full finetuning)
    alpha: float = 16.0  # scaling: the update is (alpha / r) B A
    dropout: float = 0.0  # dropout on the adapters' input
    # module names to adapt (e.g. [q_proj, v_proj]); None = every attention and MLP projection of the architecture
    target_modules: list[str] | None = None

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def __post_init__(self):
        check_finite(self, "lora")
        check(self.r >= 0, "lora.r", "must be >= 0 (0 = off)")
        check(self.alpha > 0, "lora.alpha", "must be positive")
        check(0 <= self.dropout < 1, "lora.dropout", "must be in [0, 1)")
        check(
            self.target_modules is None or len(self.target_modules) > 0,
            "lora.target_modules",
            "name at least one module, or null for the architecture's default",
        )
