"""Typed, validated configuration: one frozen dataclass per stage, checked at construction.

Values come from the dataclass defaults, then a YAML file, then dotted command-line overrides
(`train.lr=3e-4 objective.name=conditional`), merged by OmegaConf, which rejects unknown keys and
ill-typed values. The full resolved config is saved with every run (`config.yaml`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prefer.errors import PreferError
from prefer.io import write_text_atomic

OBJECTIVES = ("mle", "filtering", "conditional", "ul", "rwr", "awr")
PRECISIONS = ("auto", "fp32", "bf16")
PARALLEL = ("ddp", "fsdp")  # under torchrun: DistributedDataParallel or FSDP2 (fully_shard); see docs/distributed.md


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise PreferError(f"config: {field_name}: {message}")


@dataclass(frozen=True)
class DataConfig:
    task: str = "pii"  # pii | pep8: selects the corpus, scorer and the paper's thresholds
    # corpus: stdlib | site-packages | changelogs | copyrights | python-metadata | fortunes | man-pages |
    # hf:NAME[:SPLIT] | DIR of .py | FILE.jsonl, or several joined with "+"; None = the task's default
    source: str | None = None
    max_bytes: int | None = 3_000_000  # deterministic subset of the corpus; None = all of it
    validation_fraction: float = 0.05  # by source file
    cache_dir: str = ".cache/prefer"
    workers: int | None = None  # scoring processes; None = all cores
    num_shards: int = 1  # > 1: scoring is split into shards by a stable hash of each document's source
    shard_index: int | None = None  # `prefer corpus`: score only this shard; None = merge the scored shards

    def __post_init__(self):
        from prefer.tasks import TASKS

        _check(self.task in TASKS, "data.task", f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        _check(0 < self.validation_fraction < 1, "data.validation_fraction", "must be in (0, 1)")
        _check(self.max_bytes is None or self.max_bytes > 0, "data.max_bytes", "must be positive")
        _check(self.num_shards >= 1, "data.num_shards", "must be >= 1")
        _check(self.shard_index is None or 0 <= self.shard_index < self.num_shards, "data.shard_index",
               f"must be in [0, data.num_shards={self.num_shards})")


@dataclass(frozen=True)
class ModelConfig:
    size: str = "small"  # tiny | small | medium-cpu | gpt2-small (ignored with init_from)
    init_from: str | None = None  # any local Hugging Face causal LM directory
    tokenizer: str | None = None  # any local HF tokenizer; None = train a byte-level BPE on the corpus
    vocab_size: int = 8192
    context: int | None = None  # None = the size's default
    dropout: float = 0.0

    def __post_init__(self):
        from prefer.models.build import MODEL_SIZES

        _check(self.size in MODEL_SIZES, "model.size", f"unknown size {self.size!r}; choose one of {', '.join(MODEL_SIZES)}")
        _check(self.vocab_size >= 300, "model.vocab_size", "must be >= 300")
        _check(self.context is None or self.context >= 8, "model.context", "must be >= 8")
        _check(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which objective, and its hyperparameters. None = the task's value from the paper."""

    name: str = "mle"  # mle | filtering | conditional | ul | rwr | awr
    threshold: float | None = None  # segment score above which a segment is bad (conditional, UL)
    filter_threshold: float | None = None  # document mean score above which filtering drops it
    drop_fraction: float | None = None  # conditional: fraction of segments left untagged
    ul_alpha: float | None = None
    rwr_beta: float | None = None
    awr_alpha: float | None = None
    awr_beta: float | None = None
    # When set, `threshold` is this quantile of the training segments' scores (0.9: the worst 10% at most are bad)
    # and `filter_threshold` this quantile of the training documents' mean scores, for corpora and scorers whose
    # scale differs from the paper's. The value computed is written to the run's config beside the quantile.
    threshold_quantile: float | None = None
    filter_quantile: float | None = None

    def __post_init__(self):
        for name in ("threshold_quantile", "filter_quantile"):
            value = getattr(self, name)
            _check(value is None or 0 <= value <= 1, f"objective.{name}", "must be in [0, 1]")
        _check(self.name in OBJECTIVES, "objective.name", f"unknown objective {self.name!r}; choose one of {', '.join(OBJECTIVES)}")
        _check(self.drop_fraction is None or 0 <= self.drop_fraction <= 1, "objective.drop_fraction", "must be in [0, 1]")
        for name in ("rwr_beta", "awr_beta"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"objective.{name}", "must be > 0")
        _check(self.awr_alpha is None or 0 <= self.awr_alpha <= 1, "objective.awr_alpha", "must be in [0, 1]")

    def resolved(self, task_name: str) -> ObjectiveConfig:
        """Fill every None from the task, so the saved config states the values actually used."""
        from prefer.tasks import get_task

        task = get_task(task_name)
        values = {key: (getattr(task, key) if value is None else value) for key, value in asdict(self).items()}
        return ObjectiveConfig(**values)


@dataclass(frozen=True)
class TrainConfig:
    tokens: int = 1_000_000  # training budget, counted honestly (every token of every block fed to the model)
    batch_size: int = 16  # sequences per optimizer step (all ranks together)
    micro_batch_size: int | None = None  # sequences per forward pass; None = batch_size (no accumulation)
    lr: float | None = None  # None = the task's paper value
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_fraction: float = 0.01
    min_lr_fraction: float = 0.1  # linear decay to this fraction of lr
    grad_clip: float = 1.0
    eval_every: int = 100  # steps between held-out loss evaluations
    eval_blocks: int = 64  # validation blocks per held-out evaluation
    checkpoint_every: int = 100  # steps between resumable checkpoints
    snapshots: list[float] = field(default_factory=list)  # fractions of the budget at which to keep a model snapshot
    # With model.init_from a prefer checkpoint that records its tokens (e.g. an MLE snapshot at 50%), `tokens` is
    # the whole budget including them: the run trains the rest, on the rest of the same learning-rate schedule,
    # and logs global token counts (Korbak et al. 2023, Sec. 5, finetuning vs pretraining with feedback).
    # false: train `tokens` more, on a fresh schedule.
    count_init_tokens: bool = True
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    parallel: str = "ddp"  # under torchrun: ddp (whole model on each rank) | fsdp (FSDP2: weights, optimizer sharded)
    progress: bool = True

    def __post_init__(self):
        _check(self.tokens > 0, "train.tokens", "must be positive")
        _check(self.batch_size > 0, "train.batch_size", "must be positive")
        if self.micro_batch_size is not None:
            _check(self.micro_batch_size > 0 and self.batch_size % self.micro_batch_size == 0,
                   "train.micro_batch_size", f"must divide train.batch_size ({self.batch_size})")
        _check(self.lr is None or self.lr > 0, "train.lr", "must be positive")
        _check(0 <= self.warmup_fraction < 1, "train.warmup_fraction", "must be in [0, 1)")
        _check(0 <= self.min_lr_fraction <= 1, "train.min_lr_fraction", "must be in [0, 1]")
        _check(self.eval_every > 0 and self.checkpoint_every > 0, "train.eval_every", "intervals must be positive")
        _check(all(0 < f <= 1 for f in self.snapshots), "train.snapshots", "fractions must be in (0, 1]")
        _check(self.precision in PRECISIONS, "train.precision", f"choose one of {', '.join(PRECISIONS)}")
        _check(self.parallel in PARALLEL, "train.parallel", f"choose one of {', '.join(PARALLEL)}")


@dataclass(frozen=True)
class PretrainConfig:
    out_dir: str = "runs/pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class SamplingConfig:
    """How samples are drawn for evaluation (the paper: 128 tokens, temperature 0.7, top-p 0.9)."""

    num_samples: int = 512
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    prompt: str = "auto"  # auto = `<|good|>` for conditional models, nothing for others; or none | good | bad
    block: str = "auto"  # auto = block `<|bad|>` for conditional models, both tags for others; or none | bad | both
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self):
        _check(self.num_samples > 0, "sampling.num_samples", "must be positive")
        _check(self.max_new_tokens > 0, "sampling.max_new_tokens", "must be positive")
        _check(self.temperature >= 0, "sampling.temperature", "must be >= 0")
        _check(0 < self.top_p <= 1, "sampling.top_p", "must be in (0, 1]")
        _check(self.prompt in ("auto", "none", "good", "bad"), "sampling.prompt", "choose auto | none | good | bad")
        _check(self.block in ("auto", "none", "bad", "both"), "sampling.block", "choose auto | none | bad | both")


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str = ""  # a model directory written by `prefer pretrain` (or any HF causal LM with --task)
    task: str | None = None  # None = the checkpoint's task
    out: str | None = None  # results JSON; None = <checkpoint>/evaluation.json
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    device: str = "auto"

    def __post_init__(self):
        _check(bool(self.checkpoint), "checkpoint", "a checkpoint directory is required")


@dataclass(frozen=True)
class ExperimentConfig:
    """`prefer experiment`: one model per objective on the same tokens, evaluated on the same protocol (and MLE
    continued with feedback from a snapshot, for `finetune`). `prefer demo` is this with objectives mle,conditional."""

    out_dir: str = "runs/experiment"
    task: str = "pii"  # toxicity | pii | pep8
    objectives: list[str] = field(default_factory=lambda: list(OBJECTIVES))
    finetune: list[str] = field(default_factory=list)  # objectives also run from MLE's snapshot at finetune_from
    finetune_from: float = 0.5  # fraction of the budget MLE has trained when finetuning with feedback starts
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(
        data=DataConfig(max_bytes=None),
        model=ModelConfig(size="small", vocab_size=4096),
        train=TrainConfig(tokens=1_000_000, batch_size=8, lr=3e-3, eval_every=25, checkpoint_every=50,
                          snapshots=[0.125, 0.25, 0.5])))
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    curve_samples: int = 128  # samples per point of the misalignment-over-tokens curve
    # Capability: KL(reference || model) from reference samples. "mle" = this experiment's MLE model (the cost of
    # feedback at equal tokens); any local HF causal LM directory (the paper: a much larger model); null = skip.
    reference: str | None = "mle"
    kl_samples: int = 256
    capability_documents: int = 256  # validation documents for the held-out loss per token and per byte
    code_prompts: int = 128  # code tasks: function signatures completed, scored and parsed (0 = skip)
    # Red-teaming (`prefer redteam`) of these models of the experiment, e.g. [mle, conditional]. The red-team LM is
    # `redteam_model`: "mle" = this experiment's MLE model prompted few-shot (no instruction-following LM is
    # available offline on a CPU), or any local HF causal LM directory.
    redteam: list[str] = field(default_factory=list)
    redteam_model: str = "mle"
    redteam_rounds: int = 5
    redteam_candidates: int = 10  # new candidate prompts per round
    redteam_continuations: int = 32  # target samples per candidate (the paper: 512)
    redteam_max_new_tokens: int = 64  # per continuation (the paper: 64)
    redteam_trials: int = 2

    def __post_init__(self):
        from prefer.tasks import TASKS

        _check(self.task in TASKS, "task", f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        _check(bool(self.objectives) or bool(self.finetune), "objectives", "name at least one objective")
        for name in [*self.objectives, *self.finetune]:
            _check(name in OBJECTIVES, "objectives", f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
        _check(0 < self.finetune_from < 1, "finetune_from", "must be in (0, 1)")
        _check(self.curve_samples > 0, "curve_samples", "must be positive")
        _check(self.kl_samples > 0 and self.capability_documents > 0, "kl_samples", "sample counts must be positive")
        _check(self.code_prompts >= 0, "code_prompts", "must be >= 0")
        for name in ("redteam_rounds", "redteam_candidates", "redteam_continuations", "redteam_max_new_tokens",
                     "redteam_trials"):
            _check(getattr(self, name) > 0, name, "must be positive")


ConfigT = TypeVar("ConfigT")


def load_config(cls: type[ConfigT], *, yaml_path: str | Path | None = None, overrides: list[str] | tuple = ()) -> ConfigT:
    """Defaults <- YAML file <- dotted overrides, validated by type (OmegaConf) and by each __post_init__."""
    try:
        merged = OmegaConf.structured(cls)
        if yaml_path is not None:
            path = Path(yaml_path)
            if not path.exists():
                raise PreferError(f"{path}: config file does not exist")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        bad = [item for item in overrides if "=" not in item]
        if bad:
            raise PreferError(f"config override {bad[0]!r}: expected key=value, e.g. train.lr=3e-4")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        message = str(error).splitlines()[0]
        source = f" (in {yaml_path})" if yaml_path else ""
        raise PreferError(f"config: {key + ': ' if key else ''}{message}{source}") from None


def config_to_dict(config: Any) -> dict:
    return asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


@dataclass(frozen=True)
class PPOConfig:
    """PPO against a scorer or reward model, with a per-token KL penalty to the frozen SFT model, and PPO-ptx
    (Ouyang et al. 2022, Sec. 3.5 and Eq. 2). Defaults are the paper's where it gives one (beta 0.02, gamma 1,
    clip 0.2, one PPO epoch, temperature 1), scaled down in batch size for the CPU."""

    out_dir: str = "runs/ppo"
    init_from: str = ""  # the SFT model directory: the policy starts here and it is the frozen KL reference
    prompts: str = ""  # prompts JSONL ({"prompt": str} per line)
    scorer: str | None = None  # proxy reward: any scorer name (pep8, pii, rm:DIR); reward = -score; None = rm:<reward_model>
    reward_model: str | None = None  # reward model directory: the value model starts from it (InstructGPT)
    gold_scorer: str | None = None  # scored on every rollout, never rewarded: measures over-optimisation
    iterations: int = 100  # rollout batches
    batch_size: int = 64  # episodes (prompts) per iteration
    minibatch_size: int = 16  # episodes per optimizer step
    micro_batch_size: int | None = None  # episodes per forward pass; None = minibatch_size (no accumulation)
    ppo_epochs: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0  # sampling temperature; log-probs for the ratio and the KL use the same one
    lr: float = 1e-5
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    kl_coef: float = 0.02  # beta; the starting value when target_kl is set
    target_kl: float | None = None  # adaptive KL controller (Ziegler et al. 2019) when set; else fixed beta
    kl_horizon: float = 10_000  # controller horizon, in episodes
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    vf_coef: float = 0.1
    missing_eos_penalty: float | None = None  # subtracted from the proxy reward of a response that never stops
    ptx_coef: float = 0.0  # PPO-ptx: gamma of Eq. 2 (the paper: 27.8); 0 = plain PPO
    ptx_source: str | None = None  # pretraining corpus (stdlib | changelogs | DIR | FILE.jsonl); required with ptx_coef
    ptx_batch_size: int = 8  # pretraining blocks per optimizer step
    ptx_max_bytes: int | None = 1_000_000
    ptx_eval_blocks: int = 32  # held-out pretraining blocks for the logged LM loss (the alignment tax)
    log_samples: int = 4  # responses per iteration written to samples.jsonl
    checkpoint_every: int = 10  # iterations between resumable checkpoints
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    parallel: str = "ddp"  # under torchrun: ddp | fsdp (FSDP2: policy, critic and reference sharded)
    progress: bool = True

    def __post_init__(self):
        _check(bool(self.init_from), "init_from", "the SFT model directory is required")
        _check(bool(self.prompts), "prompts", "a prompts JSONL file is required")
        _check(self.scorer is not None or self.reward_model is not None, "scorer",
               "name a scorer (e.g. pep8, rm:DIR) or give reward_model")
        for name in ("iterations", "batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens",
                     "checkpoint_every", "ptx_batch_size", "ptx_eval_blocks"):
            _check(getattr(self, name) > 0, name, "must be positive")
        _check(self.batch_size % self.minibatch_size == 0, "minibatch_size", f"must divide batch_size ({self.batch_size})")
        if self.micro_batch_size is not None:
            _check(self.micro_batch_size > 0 and self.minibatch_size % self.micro_batch_size == 0,
                   "micro_batch_size", f"must divide minibatch_size ({self.minibatch_size})")
        _check(self.temperature > 0, "temperature", "must be > 0 (PPO needs a stochastic policy)")
        _check(self.lr > 0, "lr", "must be positive")
        _check(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        _check(self.target_kl is None or self.target_kl > 0, "target_kl", "must be > 0")
        _check(self.kl_horizon > 0, "kl_horizon", "must be positive")
        _check(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "gamma", "gamma and lam must be in [0, 1]")
        _check(self.clip_range > 0 and self.value_clip_range > 0, "clip_range", "clip ranges must be positive")
        _check(self.vf_coef >= 0, "vf_coef", "must be >= 0")
        _check(self.ptx_coef >= 0, "ptx_coef", "must be >= 0")
        _check(self.ptx_coef == 0 or self.ptx_source is not None, "ptx_source", "required when ptx_coef > 0")
        _check(self.log_samples >= 0, "log_samples", "must be >= 0")
        _check(self.precision in PRECISIONS, "precision", f"choose one of {', '.join(PRECISIONS)}")
        _check(self.parallel in PARALLEL, "parallel", f"choose one of {', '.join(PARALLEL)}")


# ------------------------------------------------------------------ InstructGPT stages (Ouyang et al. 2022)

LABEL_BLOCKS = ("none", "bad", "both")


@dataclass(frozen=True)
class SFTConfig:
    """Supervised finetuning on demonstrations: loss on response tokens (+ eos) only. `model.init_from` is the
    causal LM to finetune; `model.context` caps the sequence length (None = the model's); `model.dropout` is
    applied to every dropout of the loaded model (the paper: 0.2). `train.tokens` is unused: `epochs` sets the
    length."""

    out_dir: str = "runs/sft"
    demonstrations: str = ""  # JSONL: {"prompt", "response"}
    validation_fraction: float = 0.05  # of the demonstrations, held out for the loss
    packing: bool = False  # concatenate examples into full blocks (same response-only mask)
    epochs: float = 4.0  # the paper: 16, with the checkpoint chosen by reward-model score
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-4, batch_size=16, warmup_fraction=0.05, eval_every=50, checkpoint_every=100))

    def __post_init__(self):
        _check(bool(self.demonstrations), "demonstrations", "a demonstrations JSONL file is required")
        _check(bool(self.model.init_from), "model.init_from", "the causal LM to finetune is required")
        _check(0 <= self.validation_fraction < 1, "validation_fraction", "must be in [0, 1)")
        _check(self.epochs > 0, "epochs", "must be positive")
        _check(self.train.lr is not None, "train.lr", "SFT has no task default; set a learning rate")


@dataclass(frozen=True)
class RewardConfig:
    """Reward model on K-way rankings: trunk of `model.init_from` (e.g. the SFT model) + a scalar head read at the
    last real token. `train.batch_size` counts PROMPTS (each with all its K responses); `train.tokens` is unused."""

    out_dir: str = "runs/reward"
    rankings: str = ""  # JSONL: {"prompt", "responses", "ranking"}
    demonstrations: str | None = None  # the bias makes their mean reward 0; None = each ranking's best response
    validation_fraction: float = 0.1  # of the prompts, held out for pairwise accuracy
    epochs: float = 1.0  # the paper: one epoch; more overfits
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=5e-5, batch_size=8, warmup_fraction=0.05, eval_every=50, checkpoint_every=100))

    def __post_init__(self):
        _check(bool(self.rankings), "rankings", "a rankings JSONL file is required")
        _check(bool(self.model.init_from), "model.init_from", "the causal LM whose trunk the reward model uses is required")
        _check(0 <= self.validation_fraction < 1, "validation_fraction", "must be in [0, 1)")
        _check(self.epochs > 0, "epochs", "must be positive")
        _check(self.train.lr is not None, "train.lr", "the reward model has no task default; set a learning rate")


@dataclass(frozen=True)
class LabelConfig:
    """Synthetic labelers: K samples per prompt from `model`, ranked by a gold scorer (lower misalignment is
    better) with optional Gaussian noise; writes rankings and best-of-K demonstrations."""

    model: str = ""  # a local HF causal LM to sample from
    prompts: str = ""  # JSONL: {"prompt"}
    scorer: str = "pep8"  # any `get_scorer` name (e.g. pep8, pii, rm:/path/to/reward_model)
    rankings_out: str = "rankings.jsonl"
    demonstrations_out: str = "demonstrations.jsonl"
    num_responses: int = 4  # K, 2..9 (the paper: 4..9)
    noise: float = 0.0  # std of the Gaussian noise on the scores, relative to the scores' std
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    block: str = "both"  # control tokens never sampled: none | bad | both
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        from prefer.data.formats import MAX_RESPONSES, MIN_RESPONSES

        _check(bool(self.model), "model", "the model to sample responses from is required")
        _check(bool(self.prompts), "prompts", "a prompts JSONL file is required")
        _check(MIN_RESPONSES <= self.num_responses <= MAX_RESPONSES, "num_responses",
               f"must be in [{MIN_RESPONSES}, {MAX_RESPONSES}]")
        _check(self.noise >= 0, "noise", "must be >= 0")
        _check(self.max_new_tokens > 0, "max_new_tokens", "must be positive")
        _check(self.temperature >= 0, "temperature", "must be >= 0")
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(self.block in LABEL_BLOCKS, "block", f"choose one of {', '.join(LABEL_BLOCKS)}")
        _check(self.batch_size > 0, "batch_size", "must be positive")


@dataclass(frozen=True)
class RedteamConfig:
    """Automated red-teaming by stochastic few-shot generation (Korbak et al. 2023 after Perez et al. 2022): 20 seed
    prompts, `rounds` rounds of `shots` pool prompts drawn with P ~ exp(score / temperature) -> new candidates from a
    red-team LM -> `continuations` target samples each; a candidate's score is their mean misalignment. The paper:
    10 rounds, 512 continuations of at most 64 tokens, temperature 0.1. The red-team LM is a local causal LM
    (`redteam_model`) or an OpenAI-compatible server (`endpoint_url`, its API key from the environment variable
    named by `api_key_env`)."""

    out_dir: str = "runs/redteam"
    target: str = ""  # the target model directory (a prefer checkpoint or any HF causal LM with task=...)
    task: str | None = None  # None = the target's task
    scorer: str | None = None  # None = the task's headline scorer
    score_on: str = "auto"  # auto (in_context for pep8, else continuation) | continuation | in_context
    seeds: str | None = None  # seed prompt file (one prompt per line, \n for newlines); None = the task's shipped seeds
    behaviour: str | None = None  # "List of prompts that make an AI write <behaviour>:"; None = the task's
    redteam_model: str | None = None  # local HF causal LM directory
    endpoint_url: str | None = None  # OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1
    endpoint_model: str = ""  # the server's model name
    endpoint_api: str = "completions"  # completions | chat
    endpoint_timeout: float = 60.0  # seconds per request
    api_key_env: str | None = None  # NAME of the environment variable holding the API key (never the key itself)
    rounds: int = 10
    candidates_per_round: int = 20
    shots: int = 4  # pool prompts shown per round
    continuations: int = 64  # target samples per candidate (the paper: 512)
    max_new_tokens: int = 64  # per target continuation
    candidate_max_tokens: int = 48  # per red-team completion (cut at its first newline)
    trials: int = 3  # independent runs (seeds seed, seed+1, ...)
    temperature: float = 0.1  # of the draw: P ~ exp(score / temperature)
    score_scale: str = "none"  # none (the paper's literal rule) | std (scores divided by the pool's std first)
    redteam_temperature: float = 1.0
    redteam_top_p: float = 1.0
    target_temperature: float = 0.7  # the evaluation protocol's sampling
    target_top_p: float = 0.9
    keep_continuations: int = 3  # continuations per candidate written to the pool files
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        from prefer.evaluation.chat_endpoint import ENDPOINT_APIS
        from prefer.evaluation.redteam import SCORE_ON, SCORE_SCALES

        _check(bool(self.target), "target", "the target model directory is required")
        _check((self.redteam_model is None) != (self.endpoint_url is None), "redteam_model",
               "give exactly one of redteam_model (a local LM directory) and endpoint_url")
        _check(self.endpoint_url is None or bool(self.endpoint_model), "endpoint_model",
               "the server's model name is required with endpoint_url")
        _check(self.endpoint_api in ENDPOINT_APIS, "endpoint_api", f"choose one of {', '.join(ENDPOINT_APIS)}")
        _check(self.endpoint_timeout > 0, "endpoint_timeout", "must be positive")
        _check(self.score_on == "auto" or self.score_on in SCORE_ON, "score_on",
               f"choose auto | {' | '.join(SCORE_ON)}")
        _check(self.score_scale in SCORE_SCALES, "score_scale", f"choose one of {', '.join(SCORE_SCALES)}")
        for name in ("candidates_per_round", "shots", "continuations", "max_new_tokens", "candidate_max_tokens",
                     "trials", "batch_size"):
            _check(getattr(self, name) > 0, name, "must be positive")
        _check(self.rounds >= 0, "rounds", "must be >= 0")
        _check(self.keep_continuations >= 0, "keep_continuations", "must be >= 0")
        _check(self.temperature > 0, "temperature", "must be > 0")
        _check(self.redteam_temperature >= 0 and self.target_temperature >= 0, "redteam_temperature",
               "sampling temperatures must be >= 0")
        _check(0 < self.redteam_top_p <= 1 and 0 < self.target_top_p <= 1, "target_top_p", "top-p must be in (0, 1]")


# ------------------------------------------------------------------ `prefer rlhf` (the InstructGPT experiment)

AUTO = "auto"  # a path `prefer rlhf` fills in for the stage (prompts, models, labels); any value given is replaced


def _auto_label() -> LabelConfig:
    return LabelConfig(model=AUTO, prompts=AUTO, scorer=AUTO, num_responses=4, max_new_tokens=64, batch_size=128)


def _auto_sft() -> SFTConfig:
    return SFTConfig(demonstrations=AUTO, epochs=2.0, model=ModelConfig(init_from=AUTO),
                     train=TrainConfig(lr=3e-4, batch_size=16, warmup_fraction=0.05, eval_every=50,
                                       checkpoint_every=1000, progress=False))


def _auto_reward() -> RewardConfig:
    return RewardConfig(rankings=AUTO, epochs=2.0, validation_fraction=0.15, model=ModelConfig(init_from=AUTO),
                        train=TrainConfig(lr=3e-4, batch_size=8, warmup_fraction=0.05, eval_every=50,
                                          checkpoint_every=1000, progress=False))


def _auto_ppo() -> PPOConfig:
    return PPOConfig(init_from=AUTO, prompts=AUTO, reward_model=AUTO, iterations=40, batch_size=32, minibatch_size=8,
                     max_new_tokens=64, lr=1e-4, kl_coef=0.05, checkpoint_every=1000, progress=False, log_samples=2)


@dataclass(frozen=True)
class RLHFConfig:
    """`prefer rlhf`: InstructGPT on one task with synthetic labelers (Ouyang et al. 2022; the gold-scorer setup of
    Gao et al. 2022). Prompts from the task's corpus are split into labelling, SFT-validation, RL and evaluation
    prompts; a starting model (`init_from`, or pretrained here with `pretrain`) writes K responses per labelling
    prompt, ranked by `gold_scorer`; SFT on the best of K (the checkpoint chosen by reward-model score); a reward
    model on all rankings and a weak proxy on `weak_fraction` of them; best-of-n against the proxies, PPO at each
    of `kl_coefs`, PPO-ptx at the best of them, and PPO against the weak proxy evaluated every `overopt_every`
    iterations; every policy evaluated on the same protocol (prefer.evaluation.policy). The stage sections
    (`label`, `sft`, `reward`, `ppo`) are the stages' own configs; their paths ("auto") are set by the command."""

    out_dir: str = "runs/rlhf"
    task: str = "pii"  # its corpus gives the prompts and the pretraining text (PPO-ptx, alignment tax)
    source: str | None = None  # prompt and pretraining corpus; None = the task's
    gold_scorer: str = "pii-entry"  # the synthetic labelers' judgement, and the gold standard of every evaluation
    prompt_lines: int = 1  # a prompt: an entry's first line, its blank line and this many change lines (changelogs)
    max_prompt_chars: int = 160
    label_prompts: int = 1200
    validation_prompts: int = 64  # SFT checkpoint selection by reward-model score
    rl_prompts: int = 512
    eval_prompts: int = 256
    init_from: str | None = None  # a pretrained causal LM; None = pretrain one with `pretrain` on the task's corpus
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(
        data=DataConfig(max_bytes=None),
        model=ModelConfig(size="small", vocab_size=4096),
        train=TrainConfig(tokens=1_000_000, batch_size=8, lr=3e-3, eval_every=50, checkpoint_every=100,
                          progress=False)))
    label: LabelConfig = field(default_factory=_auto_label)
    # Labelers who agree with each other this often on a pair (the paper: 72.6%): Gaussian noise on the gold
    # scores, its scale found so that two independent noisy labelers agree at this rate; a second reward model is
    # trained on these noisy rankings and reported beside the clean one. None = no noisy labels.
    label_agreement: float | None = 0.726
    sft: SFTConfig = field(default_factory=_auto_sft)
    sft_epochs: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])  # candidates, chosen by RM score
    reward: RewardConfig = field(default_factory=_auto_reward)
    weak_fraction: float = 0.125  # the weak proxy learns from this share of the labelling prompts
    best_of_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    best_of_n_prompts: int = 64  # the first evaluation prompts, max(best_of_n) SFT samples each (the pool)
    ppo: PPOConfig = field(default_factory=_auto_ppo)
    kl_coefs: list[float] = field(default_factory=lambda: [0.2, 0.05, 0.01])  # one PPO run against the RM each
    ptx_coef: float = 1.0  # PPO-ptx at the best KL coefficient (the paper: 27.8 at its scale)
    overopt_kl_coef: float = 0.0  # PPO against the weak proxy, its gold and proxy reward read as KL grows
    overopt_iterations: int = 60
    overopt_every: int = 10
    eval_samples: int = 1  # responses per evaluation prompt and policy
    eval_temperature: float = 1.0  # the policies' own distribution (what PPO optimised and the KL is taken on)
    heldout_blocks: int = 64  # validation blocks of the corpus for the held-out pretraining loss
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        from prefer.data.formats import MAX_RESPONSES, MIN_RESPONSES
        from prefer.tasks import TASKS

        _check(self.task in TASKS, "task", f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        _check(bool(self.gold_scorer), "gold_scorer", "name the gold scorer (e.g. pii-entry, pep8)")
        _check(MIN_RESPONSES <= self.label.num_responses <= MAX_RESPONSES, "label.num_responses",
               f"K must be in [{MIN_RESPONSES}, {MAX_RESPONSES}] (the paper: 4..9)")
        _check(self.best_of_n_prompts <= self.eval_prompts, "best_of_n_prompts", "must be <= eval_prompts")
        for name in ("label_prompts", "validation_prompts", "rl_prompts", "eval_prompts", "max_prompt_chars",
                     "best_of_n_prompts",
                     "eval_samples", "heldout_blocks", "overopt_iterations", "overopt_every"):
            _check(getattr(self, name) > 0, name, "must be positive")
        _check(self.prompt_lines >= 0, "prompt_lines", "must be >= 0")
        _check(self.label_agreement is None or 0.5 < self.label_agreement < 1, "label_agreement",
               "must be in (0.5, 1): the rate at which two labelers agree on a pair")
        _check(bool(self.sft_epochs) and all(e > 0 for e in self.sft_epochs), "sft_epochs", "positive epochs")
        _check(0 < self.weak_fraction <= 1, "weak_fraction", "must be in (0, 1]")
        _check(bool(self.best_of_n) and all(n >= 1 for n in self.best_of_n), "best_of_n", "n must be >= 1")
        _check(bool(self.kl_coefs) and all(c >= 0 for c in self.kl_coefs), "kl_coefs", "coefficients must be >= 0")
        _check(self.ptx_coef >= 0 and self.overopt_kl_coef >= 0, "ptx_coef", "must be >= 0")
        _check(self.eval_temperature > 0, "eval_temperature", "must be > 0 (the KL is taken on sampled responses)")
