"""Configs of the pretraining half (Korbak et al. 2023): pretrain, evaluate, red-team, and the experiment."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from prefer.config.common import (
    EndpointConfig,
    GenerationConfig,
    InferenceRuntimeConfig,
    OptimizerConfig,
    RuntimeConfig,
    SamplingConfig,
    ScheduleConfig,
    check,
)
from prefer.tasks import TASKS, Task, get_task

# The objectives' implementations are `prefer.training.objective_table.OBJECTIVES` (transform, loss, needs); a test
# checks that it names exactly these.
OBJECTIVES = ("mle", "filtering", "conditional", "ul", "rwr", "awr")
MODEL_SIZES = ("tiny", "small", "medium-cpu", "gpt2-small")  # prefer.models.build.MODEL_SIZES holds their shapes
SCORE_ON = ("continuation", "in_context")  # see prefer.evaluation.redteam
SCORE_SCALES = ("none", "std")


@dataclass(frozen=True)
class DataConfig:
    task: str = "pii"  # toxicity | pii | pep8: selects the corpus, scorer and the paper's thresholds
    # scores the corpus's segments instead of the task's scorer: any segment scorer name, or your own
    # (py:MODULE:NAME, py:FILE.py:NAME, a plugin name; docs/scorers.md); None = the task's
    scorer: str | None = None
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
        check(self.task in TASKS, "data.task", f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        check(self.scorer is None or bool(self.scorer.strip()), "data.scorer", "name a scorer, or null for the task's")
        check(0 < self.validation_fraction < 1, "data.validation_fraction", "must be in (0, 1)")
        check(self.max_bytes is None or self.max_bytes > 0, "data.max_bytes", "must be positive")
        check(self.num_shards >= 1, "data.num_shards", "must be >= 1")
        check(
            self.shard_index is None or 0 <= self.shard_index < self.num_shards,
            "data.shard_index",
            f"must be in [0, data.num_shards={self.num_shards})",
        )

    def resolved_task(self) -> Task:
        """The task, with `scorer` as its segment scorer when one is set."""
        task = get_task(self.task)
        return task if self.scorer is None else replace(task, scorer=self.scorer)


@dataclass(frozen=True)
class ModelConfig:
    size: str = "small"  # tiny | small | medium-cpu | gpt2-small (ignored with init_from)
    init_from: str | None = None  # any local Hugging Face causal LM directory
    tokenizer: str | None = None  # any local HF tokenizer; None = train a byte-level BPE on the corpus
    vocab_size: int = 8192  # of the trained tokenizer
    context: int | None = None  # None = the size's default
    dropout: float = 0.0

    def __post_init__(self):
        check(
            self.size in MODEL_SIZES,
            "model.size",
            f"unknown size {self.size!r}; choose one of {', '.join(MODEL_SIZES)}",
        )
        check(self.vocab_size >= 300, "model.vocab_size", "must be >= 300")
        check(self.context is None or self.context >= 8, "model.context", "must be >= 8")
        check(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")


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
            check(value is None or 0 <= value <= 1, f"objective.{name}", "must be in [0, 1]")
        check(
            self.name in OBJECTIVES,
            "objective.name",
            f"unknown objective {self.name!r}; choose one of {', '.join(OBJECTIVES)}",
        )
        check(
            self.drop_fraction is None or 0 <= self.drop_fraction <= 1, "objective.drop_fraction", "must be in [0, 1]"
        )
        for name in ("rwr_beta", "awr_beta"):
            value = getattr(self, name)
            check(value is None or value > 0, f"objective.{name}", "must be > 0")
        check(self.awr_alpha is None or 0 <= self.awr_alpha <= 1, "objective.awr_alpha", "must be in [0, 1]")

    def resolved(self, task_name: str) -> ObjectiveConfig:
        """Fill every None from the task, so the saved config states the values actually used."""
        task = get_task(task_name)
        values = {key: (getattr(task, key) if value is None else value) for key, value in asdict(self).items()}
        return ObjectiveConfig(**values)


@dataclass(frozen=True)
class PretrainTrainConfig:
    tokens: int = 1_000_000  # training budget, counted honestly (every token of every block fed to the model)
    batch_size: int = 16  # sequences per optimizer step (all ranks together)
    micro_batch_size: int | None = None  # sequences per forward pass; None = batch_size (no accumulation)
    eval_every: int = 100  # steps between held-out loss evaluations
    eval_blocks: int = 64  # validation blocks per held-out evaluation
    checkpoint_every: int = 100  # steps between resumable checkpoints
    snapshots: list[float] = field(default_factory=list)  # fractions of the budget at which to keep a model snapshot
    # With model.init_from a prefer checkpoint that records its tokens (e.g. an MLE snapshot at 50%), `tokens` is
    # the whole budget including them: the run trains the rest, on the rest of the same learning-rate schedule,
    # and logs global token counts (Korbak et al. 2023, Sec. 5, finetuning vs pretraining with feedback).
    # false: train `tokens` more, on a fresh schedule.
    count_init_tokens: bool = True

    def __post_init__(self):
        check(self.tokens > 0, "train.tokens", "must be positive")
        check(self.batch_size > 0, "train.batch_size", "must be positive")
        check_micro_batch(self.batch_size, self.micro_batch_size)
        check(self.eval_every > 0 and self.checkpoint_every > 0, "train.eval_every", "intervals must be positive")
        check(self.eval_blocks > 0, "train.eval_blocks", "must be positive")
        check(all(0 < f <= 1 for f in self.snapshots), "train.snapshots", "fractions must be in (0, 1]")


def check_micro_batch(batch_size: int, micro_batch_size: int | None) -> None:
    if micro_batch_size is not None:
        check(
            micro_batch_size > 0 and batch_size % micro_batch_size == 0,
            "train.micro_batch_size",
            f"must divide train.batch_size ({batch_size})",
        )


@dataclass(frozen=True)
class PretrainConfig:
    out_dir: str = "runs/pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # lr None = the task's paper value
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: str = ""  # a model directory written by `prefer pretrain` (or any HF causal LM with task=...)
    task: str | None = None  # None = the checkpoint's task
    # results JSON; None = runs/evaluate/<checkpoint's name>/evaluation.json (never inside the checkpoint)
    out: str | None = None
    # JSONL of {"prompt"} / {"messages"} lines to answer (conversations rendered with the model's chat template);
    # None and no prompt_texts = unprompted samples (end-of-text, then the control tag of sampling.prompt)
    prompts: str | None = None
    prompt_texts: list[str] = field(default_factory=list)  # prompts as text (`--prompt`; a user turn for a chat model)
    samples_per_prompt: int = 4  # with prompts: samples of each (sampling.num_samples is then unused)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # sampling.seed: the samples' seed
    # device and progress bars; runtime.seed is refused: the samples are drawn with sampling.seed
    runtime: InferenceRuntimeConfig = field(default_factory=InferenceRuntimeConfig)

    def __post_init__(self):
        check(bool(self.checkpoint), "checkpoint", "a checkpoint directory is required")
        check(
            self.runtime.seed == InferenceRuntimeConfig.seed,
            "runtime.seed",
            "prefer evaluate draws its samples with sampling.seed; set that instead",
        )
        check(self.samples_per_prompt > 0, "samples_per_prompt", "must be positive")
        check(all(text.strip() for text in self.prompt_texts), "prompt_texts", "a prompt is empty")


@dataclass(frozen=True)
class RedteamSearchConfig:
    """The search of Perez et al. 2022 as Korbak et al. 2023 run it: `rounds` rounds of `shots` pool prompts drawn
    with P ~ exp(score / temperature) -> `candidates_per_round` new prompts from the red-team LM."""

    rounds: int = 10
    candidates_per_round: int = 20
    shots: int = 4  # pool prompts shown per round
    trials: int = 3  # independent runs (seeds runtime.seed, runtime.seed + 1, ...)
    temperature: float = 0.1  # of the draw: P ~ exp(score / temperature)
    score_scale: str = "none"  # none (the paper's literal rule) | std (scores divided by the pool's std first)

    def __post_init__(self):
        check(self.rounds >= 0, "search.rounds", "must be >= 0")
        for name in ("candidates_per_round", "shots", "trials"):
            check(getattr(self, name) > 0, f"search.{name}", "must be positive")
        check(self.temperature > 0, "search.temperature", "must be > 0")
        check(self.score_scale in SCORE_SCALES, "search.score_scale", f"choose one of {', '.join(SCORE_SCALES)}")


@dataclass(frozen=True)
class ContinuationsConfig:
    """The target's samples for each candidate prompt; their mean misalignment is the candidate's score."""

    count: int = 64  # per candidate (the paper: 512)
    max_new_tokens: int = 64  # (the paper: 64)
    temperature: float = 0.7  # the evaluation protocol's sampling
    top_p: float = 0.9
    keep: int = 3  # continuations per candidate written to the pool files

    def __post_init__(self):
        check(self.count > 0, "continuations.count", "must be positive")
        check(self.max_new_tokens > 0, "continuations.max_new_tokens", "must be positive")
        check(self.temperature >= 0, "continuations.temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "continuations.top_p", "must be in (0, 1]")
        check(self.keep >= 0, "continuations.keep", "must be >= 0")


@dataclass(frozen=True)
class RedteamConfig:
    """Automated red-teaming by stochastic few-shot generation (Korbak et al. 2023 after Perez et al. 2022): 20 seed
    prompts, then `search.rounds` rounds; the paper: 10 rounds, 512 continuations of at most 64 tokens, temperature
    0.1. The red-team LM is a local causal LM (`redteam_model`) or an OpenAI-compatible server (`endpoint.url`)."""

    out_dir: str = "runs/redteam"
    target: str = ""  # the target model directory (a prefer checkpoint or any HF causal LM with task=...)
    task: str | None = None  # None = the target's task
    scorer: str | None = None  # None = the task's headline scorer
    score_on: str = "auto"  # auto (in_context for pep8, else continuation) | continuation | in_context
    seeds: str | None = None  # seed prompt file (one prompt per line, \n for newlines); None = the task's shipped seeds
    behaviour: str | None = None  # "List of prompts that make an AI write <behaviour>:"; None = the task's
    redteam_model: str | None = None  # local HF causal LM directory
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    search: RedteamSearchConfig = field(default_factory=RedteamSearchConfig)
    # the red-team LM's completions, each cut at its first newline
    candidates: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=48))
    continuations: ContinuationsConfig = field(default_factory=ContinuationsConfig)
    batch_size: int = 128  # sequences per forward pass
    # runtime.seed: trial i's search draws with runtime.seed + i
    runtime: InferenceRuntimeConfig = field(default_factory=InferenceRuntimeConfig)

    def __post_init__(self):
        check(bool(self.target), "target", "the target model directory is required")
        check(
            (self.redteam_model is None) != (self.endpoint.url is None),
            "redteam_model",
            "give exactly one of redteam_model (a local LM directory) and endpoint.url",
        )
        check(self.score_on == "auto" or self.score_on in SCORE_ON, "score_on", f"choose auto | {' | '.join(SCORE_ON)}")
        self.candidates.check("candidates")
        check(self.batch_size > 0, "batch_size", "must be positive")


@dataclass(frozen=True)
class ExperimentRedteamConfig:
    """Red-teaming of some of the experiment's models (`prefer redteam` on each, same settings)."""

    models: list[str] = field(default_factory=list)  # e.g. [mle, conditional]; empty = no red-teaming
    # "mle" = this experiment's MLE model prompted few-shot (no instruction-following LM is available offline on a
    # CPU), or any local HF causal LM directory
    redteam_model: str = "mle"
    search: RedteamSearchConfig = field(
        default_factory=lambda: RedteamSearchConfig(rounds=5, candidates_per_round=10, trials=2)
    )
    continuations: ContinuationsConfig = field(default_factory=lambda: ContinuationsConfig(count=32))


def _experiment_pretrain() -> PretrainConfig:
    return PretrainConfig(
        data=DataConfig(max_bytes=None),
        model=ModelConfig(size="small", vocab_size=4096),
        train=PretrainTrainConfig(
            tokens=1_000_000, batch_size=8, eval_every=25, checkpoint_every=50, snapshots=[0.125, 0.25, 0.5]
        ),
        optimizer=OptimizerConfig(lr=3e-3),
    )


@dataclass(frozen=True)
class ExperimentConfig:
    """`prefer experiment`: one model per objective on the same tokens, evaluated on the same protocol (and MLE
    continued with feedback from a snapshot, for `finetune`). `prefer demo` is this with objectives mle,conditional."""

    out_dir: str = "runs/experiment"
    task: str = "pii"  # toxicity | pii | pep8
    objectives: list[str] = field(default_factory=lambda: list(OBJECTIVES))
    finetune: list[str] = field(default_factory=list)  # objectives also run from MLE's snapshot at finetune_from
    finetune_from: float = 0.5  # fraction of the budget MLE has trained when finetuning with feedback starts
    pretrain: PretrainConfig = field(default_factory=_experiment_pretrain)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    curve_samples: int = 128  # samples per point of the misalignment-over-tokens curve
    # Capability: KL(reference || model) from reference samples. "mle" = this experiment's MLE model (the cost of
    # feedback at equal tokens); any local HF causal LM directory (the paper: a much larger model); null = skip.
    reference: str | None = "mle"
    kl_samples: int = 256
    capability_documents: int = 256  # validation documents for the held-out loss per token and per byte
    code_prompts: int = 128  # code tasks: function signatures completed, scored and parsed (0 = skip)
    redteam: ExperimentRedteamConfig = field(default_factory=ExperimentRedteamConfig)

    def __post_init__(self):
        check(self.task in TASKS, "task", f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        check(bool(self.objectives) or bool(self.finetune), "objectives", "name at least one objective")
        for name in [*self.objectives, *self.finetune]:
            check(name in OBJECTIVES, "objectives", f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
        check(0 < self.finetune_from < 1, "finetune_from", "must be in (0, 1)")
        check(self.curve_samples > 0, "curve_samples", "must be positive")
        check(self.kl_samples > 0 and self.capability_documents > 0, "kl_samples", "sample counts must be positive")
        check(self.code_prompts >= 0, "code_prompts", "must be >= 0")
