"""Config of `prefer rlhf`: InstructGPT on one task with synthetic labelers, every stage's settings in one file."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from prefer.config.chat import INSTRUCTION_TYPES, TOPICS
from prefer.config.common import (
    GenerationConfig,
    InferenceRuntimeConfig,
    KLConfig,
    OptimizerConfig,
    RuntimeConfig,
    ScheduleConfig,
    check,
)
from prefer.config.instructgpt import (
    ALGORITHM_DEFAULTS,
    DIRECT_LOSS_NAMES,
    GROUP_ALGORITHMS,
    MAX_RESPONSES,
    MIN_RESPONSES,
    DPOConfig,
    DPODataConfig,
    DPOEvalConfig,
    DPOModelConfig,
    EpochTrainConfig,
    FinetuneModelConfig,
    GroupLossConfig,
    LabelConfig,
    PolicyGradientConfig,
    PolicyGradientTrainConfig,
    PolicyModelConfig,
    RewardConfig,
    RewardDataConfig,
    RewardSourceConfig,
    RolloutConfig,
    SFTConfig,
    SFTDataConfig,
)
from prefer.config.pretraining import (
    DataConfig,
    ModelConfig,
    PretrainConfig,
    PretrainTrainConfig,
)
from prefer.errors import PreferError

AUTO = "auto"  # a path `prefer rlhf` fills in for a stage (prompts, models, labels); any value given is replaced
_QUIET = RuntimeConfig(progress=False)


def _pretrain() -> PretrainConfig:
    return PretrainConfig(
        data=DataConfig(max_bytes=None),
        model=ModelConfig(size="small", vocab_size=4096),
        train=PretrainTrainConfig(tokens=1_000_000, batch_size=8, eval_every=50, checkpoint_every=100),
        optimizer=OptimizerConfig(lr=3e-3),
        runtime=_QUIET,
    )


def _label() -> LabelConfig:
    return LabelConfig(
        model=AUTO,
        prompts=AUTO,
        scorer=AUTO,
        num_responses=4,
        batch_size=128,
        generation=GenerationConfig(max_new_tokens=64),
        runtime=InferenceRuntimeConfig(progress=False),  # its seed is the labelers' own; its device is runtime's
    )


def _sft() -> SFTConfig:
    return SFTConfig(
        data=SFTDataConfig(demonstrations=AUTO),
        model=FinetuneModelConfig(init_from=AUTO),
        train=EpochTrainConfig(epochs=2.0, batch_size=16, checkpoint_every=1000),
        optimizer=OptimizerConfig(lr=3e-4),
        schedule=ScheduleConfig(warmup_fraction=0.05),
        runtime=_QUIET,
    )


def _reward() -> RewardConfig:
    return RewardConfig(
        data=RewardDataConfig(rankings=AUTO, validation_fraction=0.15),
        model=FinetuneModelConfig(init_from=AUTO),
        train=EpochTrainConfig(epochs=1.0, batch_size=8, checkpoint_every=1000),
        optimizer=OptimizerConfig(lr=3e-4),
        schedule=ScheduleConfig(warmup_fraction=0.05),
        runtime=_QUIET,
    )


def _policy_gradient(**settings) -> PolicyGradientConfig:
    """What PPO and RLOO / GRPO share: the paths the command fills in, 64-token rollouts, a KL coefficient of 0.05."""
    return PolicyGradientConfig(
        model=PolicyModelConfig(init_from=AUTO),
        prompts=AUTO,
        reward=RewardSourceConfig(model=AUTO),
        rollout=RolloutConfig(max_new_tokens=64),
        kl=KLConfig(coef=0.05),
        runtime=_QUIET,
        **settings,
    )


def _ppo() -> PolicyGradientConfig:
    train = PolicyGradientTrainConfig(
        iterations=30, batch_size=32, minibatch_size=8, checkpoint_every=1000, log_samples=2
    )
    return _policy_gradient(algorithm="ppo", train=train, optimizer=OptimizerConfig(lr=2e-4, weight_decay=0.0))


def _dpo() -> DPOConfig:
    return DPOConfig(
        # validation_fraction: set to the reward models' (same split, same seed), so DPO holds out the same prompts
        data=DPODataConfig(rankings=AUTO),
        model=DPOModelConfig(init_from=AUTO),
        train=EpochTrainConfig(epochs=2.0, batch_size=8, checkpoint_every=1000),
        optimizer=OptimizerConfig(lr=1e-4, weight_decay=0.0),
        schedule=ScheduleConfig(warmup_fraction=0.1),
        eval=DPOEvalConfig(kl_samples=0),  # the experiment's own protocol measures the KL
        runtime=_QUIET,
    )


def _group() -> PolicyGradientConfig:
    return _policy_gradient(
        algorithm="grpo",  # the runs take theirs from group_algorithms
        out_dir=ALGORITHM_DEFAULTS["grpo"]["out_dir"],
        # 8 prompts x 4 samples = PPO's 32 episodes per iteration: the same number of scored episodes
        train=PolicyGradientTrainConfig(
            iterations=16, batch_size=8, minibatch_size=8, checkpoint_every=1000, log_samples=2
        ),
        group=GroupLossConfig(size=4),
        optimizer=OptimizerConfig(lr=3e-4, weight_decay=0.0),
    )


# Keys of the stage sections that `prefer rlhf` sets for every run it makes: setting one is refused, naming the key
# that says it instead (a value the command would overwrite must not look as if it took effect).
SET_BY_THE_COMMAND: dict[str, str] = {
    **{f"{stage}.runtime.seed": "runtime.seed" for stage in ("sft", "reward", "ppo", "dpo", "group")},
    **{f"{stage}.runtime.device": "runtime.device" for stage in ("pretrain", "sft", "reward", "ppo", "dpo", "group")},
    "label.runtime.device": "runtime.device",
    "sft.train.epochs": "sft_epochs",
    "ppo.kl.coef": "kl_coefs",
    "ppo.ptx.coef": "ptx_coef",
    "ppo.ptx.source": "source (the task's corpus is PPO-ptx's)",
    "ppo.reward.scorer": "the reward models trained here (proxy) and gold_scorer",
    "ppo.reward.gold_scorer": "gold_scorer",
    "dpo.dpo.loss": "dpo_runs (LOSS:BETA)",
    "dpo.dpo.beta": "dpo_runs (LOSS:BETA) or ranking_beta",
    "dpo.dpo.tau": "dpo_runs (ipo:TAU)",
    "dpo.data.validation_fraction": "reward.data.validation_fraction (DPO holds out the reward models' prompts)",
    "dpo.data.feedback": "dpo_runs (kto:BETA trains on the labelers' binary labels)",
    "ppo.algorithm": "group_algorithms (the group section's runs: rloo, grpo)",
    "group.algorithm": "group_algorithms",
    "group.reward.scorer": "the reward model trained here",
    "group.reward.gold_scorer": "gold_scorer",
    "pretrain.data.task": "task",
    "pretrain.data.source": "source",
    "label.scorer": "gold_scorer",
}
# Paths the command fills in ("auto"); any other value is refused.
AUTO_PATHS = (
    "label.model",
    "label.prompts",
    "sft.data.demonstrations",
    "sft.model.init_from",
    "reward.data.rankings",
    "reward.model.init_from",
    "ppo.model.init_from",
    "ppo.prompts",
    "ppo.reward.model",
    "dpo.data.rankings",
    "dpo.model.init_from",
    "group.model.init_from",
    "group.prompts",
    "group.reward.model",
)
_TEMPLATES = {
    "pretrain": _pretrain,
    "label": _label,
    "sft": _sft,
    "reward": _reward,
    "ppo": _ppo,
    "dpo": _dpo,
    "group": _group,
}


def _dotted(config, key: str):
    for part in key.split("."):
        config = getattr(config, part)
    return config


def check_no_overwritten_keys(config) -> None:
    """PreferError (via `check`) for a stage key that `prefer rlhf` would overwrite, naming the key to use."""
    for key, instead in SET_BY_THE_COMMAND.items():
        stage, _, rest = key.partition(".")
        default = _dotted(_TEMPLATES[stage](), rest)
        check(
            _dotted(getattr(config, stage), rest) == default,
            key,
            f"prefer rlhf sets it for each run it makes; use {instead}",
        )
    for key in AUTO_PATHS:
        stage, _, rest = key.partition(".")
        check(_dotted(getattr(config, stage), rest) == AUTO, key, "prefer rlhf fills this path in; leave it out")


def parse_dpo_run(spec: str) -> tuple[str, float]:
    """ "LOSS:BETA" (e.g. "listwise:0.1", "kto:0.1") -> ("listwise", 0.1); ValueError when malformed."""
    loss, _, beta = spec.partition(":")
    if loss not in DIRECT_LOSS_NAMES or not beta:
        raise ValueError(spec)
    value = float(beta)
    if value <= 0:
        raise ValueError(spec)
    return loss, value


@dataclass(frozen=True)
class RLHFEvalConfig:
    """The evaluation protocol every policy is measured by (prefer.evaluation.policy), SFT selection included.

    `samples` responses per held-out prompt at `temperature` without top-p, scored by the gold and every proxy, the
    KL to the SFT model on those samples, the win rate against SFT, and the held-out loss. The SFT candidates are
    chosen, and best-of-n's pool is drawn, with the same sampling. Seeded by runtime.seed (the SFT model's samples
    and each policy's with their own offsets). The defaults are the labelers' own length and batch
    (label.generation.max_new_tokens, label.batch_size), which this protocol read before it had its own section."""

    prompts: int = 256  # held-out evaluation prompts (a split of the task's corpus, disjoint from the others)
    samples: int = 1  # responses per evaluation prompt and policy
    temperature: float = 1.0  # the policies' own distribution (what PPO optimised; the KL is taken on it)
    max_new_tokens: int = 64  # the length of a response, at most
    batch_size: int = 128  # sequences per forward pass, sampling and the KL's log-probabilities
    heldout_blocks: int = 64  # validation documents of the corpus for the held-out loss (the alignment tax)

    def __post_init__(self):
        for name in ("prompts", "samples", "max_new_tokens", "batch_size", "heldout_blocks"):
            check(getattr(self, name) > 0, f"eval.{name}", "must be positive")
        check(self.temperature > 0, "eval.temperature", "must be > 0 (the KL is taken on sampled responses)")


PROMPT_SETS = ("corpus", "chat")
CHAT_GOLDS = ("ifeval", "ifeval-loose")  # the IFEval judge; the command names the prompts file it reads


@dataclass(frozen=True)
class RLHFChatConfig:
    """The chat prompt set (`prompt_set: chat`): one user turn per (topic, IFEval instruction type), "Write a short
    paragraph about TOPIC. INSTRUCTION" with the instruction's own template and seeded arguments
    (prefer.scorers.instructions). The label, validation and RL prompts are drawn from the first `train_topics`
    topics' prompts; the evaluation prompts from the next `heldout_topics` topics', never seen before evaluation.
    Every prompt is rendered with the starting model's chat template once, and every stage reads that rendering."""

    train_topics: int = 32  # of the shipped topics (prefer.config.chat.TOPICS)
    heldout_topics: int = 8  # the next ones: the evaluation prompts
    instruction_types: list[str] = field(default_factory=lambda: list(INSTRUCTION_TYPES))
    # types asked for in the evaluation prompts only (none of the training prompts asks for them): [] = none
    heldout_types: list[str] = field(default_factory=list)

    def __post_init__(self):
        check(self.train_topics > 0 and self.heldout_topics > 0, "chat.train_topics", "topic counts must be positive")
        check(
            self.train_topics + self.heldout_topics <= len(TOPICS),
            "chat.heldout_topics",
            f"chat.train_topics + chat.heldout_topics must be <= {len(TOPICS)} (the shipped topics)",
        )
        types = self.instruction_types
        check(bool(types) and len(set(types)) == len(types), "chat.instruction_types", "distinct IFEval types")
        check(
            set(self.heldout_types) <= set(types) and len(set(self.heldout_types)) < len(set(types)),
            "chat.heldout_types",
            "must be some, not all, of chat.instruction_types",
        )


@dataclass(frozen=True)
class RLHFConfig:
    """`prefer rlhf`: InstructGPT on one task with synthetic labelers (Ouyang et al. 2022; the gold-scorer setup of
    Gao et al. 2022). Prompts from the task's corpus are split into labelling, SFT-validation, RL and evaluation
    prompts; a starting model (`init_from`, or pretrained here with `pretrain`) writes K responses per labelling
    prompt, ranked by `gold_scorer`; SFT on the best of K (the candidate the reward model scores best is kept); a
    reward model on all rankings and a weak proxy on `weak_fraction` of them; best-of-n against the proxies, PPO at
    each of `kl_coefs`, PPO-ptx at the best of them, and PPO against the weak proxy read every `overopt_every`
    iterations; DPO / IPO / listwise DPO on the same rankings and KTO on the labelers' binary labels of the same
    responses (`dpo_runs`, and at `ranking_sizes` other K on the same prompts), RLOO and GRPO against the reward
    model (`group_algorithms`, as many scored episodes as PPO); every policy evaluated on one protocol (`eval`,
    prefer.evaluation.policy). The sections `label`, `sft`, `reward`, `ppo`, `dpo`, `group` are the stages' own
    configs; their paths ("auto") are set by the command, and `runtime` gives every run its seed and device."""

    out_dir: str = "runs/rlhf"
    task: str = "pii"  # its corpus gives the prompts and the pretraining text (PPO-ptx, the alignment tax)
    # "corpus": prompts are openings of the task's documents; "chat": IFEval chat prompts (the `chat` section; the
    # corpus then gives only the pretraining text), judged by gold_scorer ifeval (strict) or ifeval-loose
    prompt_set: str = "corpus"
    chat: RLHFChatConfig = field(default_factory=RLHFChatConfig)
    source: str | None = None  # prompt and pretraining corpus; None = the task's
    gold_scorer: str = "pii-entry"  # the synthetic labelers' judgement, and the gold standard of every evaluation
    # > 0: the gold adds this weight x the NLL per response token under a frozen fluency judge (`fluency_judge`,
    # None = the starting model): it separates entries the base scorer ties, and knows what a proxy must learn
    fluency_weight: float = 0.0
    fluency_judge: str | None = None
    prompt_lines: int = 1  # a prompt: a document's first line and this many more non-blank lines (newline cut)
    max_prompt_chars: int = 160
    label_prompts: int = 1200
    validation_prompts: int = 64  # SFT candidate selection by reward-model score
    rl_prompts: int = 512  # (the evaluation prompts: eval.prompts)
    init_from: str | None = None  # a pretrained causal LM; None = pretrain one with `pretrain` on the task's corpus
    pretrain: PretrainConfig = field(default_factory=_pretrain)
    label: LabelConfig = field(default_factory=_label)
    # Labelers who agree with each other this often on a pair (the paper: 72.6%): Gaussian noise on the gold scores,
    # its std set so that two independent noisy labelers agree at this rate; a reward model trained on those noisy
    # rankings is reported beside the clean one. None = no noisy labels.
    label_agreement: float | None = 0.726
    sft: SFTConfig = field(default_factory=_sft)
    sft_epochs: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])  # candidates, chosen by RM score
    reward: RewardConfig = field(default_factory=_reward)
    weak_fraction: float = 0.125  # the weak proxy learns from this share of the labelling prompts
    best_of_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    best_of_n_prompts: int = 64  # the first evaluation prompts (<= eval.prompts), max(best_of_n) SFT samples each
    ppo: PolicyGradientConfig = field(default_factory=_ppo)
    kl_coefs: list[float] = field(default_factory=lambda: [0.1, 0.02])  # one PPO run against the reward model each
    ptx_coef: float = 1.0  # PPO-ptx at the best KL coefficient (the paper: 27.8 at its scale)
    overopt_kl_coef: float = 0.0  # PPO against the weak proxy, its gold and proxy reward read as the KL grows
    overopt_iterations: int = 40
    overopt_every: int = 8
    # the iteration counts at which the weak-proxy run is evaluated (e.g. [1, 2, 4, 8, 16, 32]: its KL grows
    # fast at first); None = every `overopt_every` up to `overopt_iterations`
    overopt_points: list[int] | None = None
    dpo: DPOConfig = field(default_factory=_dpo)
    # LOSS:BETA (tau for ipo); kto trains on the labelers' binary labels of the same responses (labels/feedback.jsonl)
    dpo_runs: list[str] = field(default_factory=lambda: ["dpo:0.1", "listwise:0.1", "kto:0.1"])
    ranking_sizes: list[int] = field(default_factory=list)  # other K: relabel the same prompts, pairwise vs listwise
    ranking_beta: float = 0.1  # the beta of those runs
    group: PolicyGradientConfig = field(default_factory=_group)
    group_algorithms: list[str] = field(default_factory=lambda: ["rloo", "grpo"])  # at group.kl.coef each
    # InstructGPT's collection in rounds: round r > 1 ranks the previous round's PPO policy's samples of the
    # labelling prompts, trains a reward model on every round's rankings and PPO against it (at the best of
    # kl_coefs); 1 = the starting model's samples only
    collection_rounds: int = 1
    eval: RLHFEvalConfig = field(default_factory=RLHFEvalConfig)
    # The seed and device of the runs the command makes (pretrain.runtime.seed and label.runtime.seed stay their
    # own), and the progress bars of its own sampling (the evaluations); each stage's runtime.progress says its own.
    runtime: InferenceRuntimeConfig = field(default_factory=lambda: InferenceRuntimeConfig(progress=False))

    def __post_init__(self):
        from prefer.tasks import TASKS

        check_no_overwritten_keys(self)
        check(self.task in TASKS, "task", f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        check(bool(self.gold_scorer), "gold_scorer", "name the gold scorer (e.g. pii-entry, pep8)")
        check(self.prompt_set in PROMPT_SETS, "prompt_set", f"choose one of {', '.join(PROMPT_SETS)}")
        if self.prompt_set == "chat":
            check(
                self.gold_scorer in CHAT_GOLDS,
                "gold_scorer",
                f"the chat prompts are judged by IFEval's checkers: {' or '.join(CHAT_GOLDS)}",
            )
            check(self.init_from is not None, "init_from", "the chat prompts need a chat model to start from")
            check(self.fluency_weight == 0, "fluency_weight", "the chat protocol's gold is IFEval's verdict alone")
        check(
            MIN_RESPONSES <= self.label.num_responses <= MAX_RESPONSES,
            "label.num_responses",
            f"K must be in [{MIN_RESPONSES}, {MAX_RESPONSES}] (the paper: 4..9)",
        )
        check(self.best_of_n_prompts <= self.eval.prompts, "best_of_n_prompts", "must be <= eval.prompts")
        for name in (
            "label_prompts",
            "validation_prompts",
            "rl_prompts",
            "max_prompt_chars",
            "best_of_n_prompts",
            "overopt_iterations",
            "overopt_every",
        ):
            check(getattr(self, name) > 0, name, "must be positive")
        check(self.prompt_lines >= 0, "prompt_lines", "must be >= 0")
        check(
            self.label_agreement is None or 0.5 < self.label_agreement < 1,
            "label_agreement",
            "must be in (0.5, 1): the rate at which two labelers agree on a pair",
        )
        check(bool(self.sft_epochs) and all(e > 0 for e in self.sft_epochs), "sft_epochs", "positive epochs")
        check(0 < self.weak_fraction <= 1, "weak_fraction", "must be in (0, 1]")
        check(bool(self.best_of_n) and all(n >= 1 for n in self.best_of_n), "best_of_n", "n must be >= 1")
        check(bool(self.kl_coefs) and all(c >= 0 for c in self.kl_coefs), "kl_coefs", "coefficients must be >= 0")
        check(self.ptx_coef >= 0 and self.overopt_kl_coef >= 0, "ptx_coef", "must be >= 0")
        check(
            self.overopt_points is None or (bool(self.overopt_points) and all(n > 0 for n in self.overopt_points)),
            "overopt_points",
            "positive iteration counts",
        )
        check(self.fluency_weight >= 0, "fluency_weight", "must be >= 0")
        for spec in self.dpo_runs:
            try:
                parse_dpo_run(spec)
            except ValueError:
                check(False, "dpo_runs", f"{spec!r}: write LOSS:BETA with LOSS one of {', '.join(DIRECT_LOSS_NAMES)}")
        for size in self.ranking_sizes:
            check(
                MIN_RESPONSES <= size <= MAX_RESPONSES and size != self.label.num_responses,
                "ranking_sizes",
                f"{size}: another K in [{MIN_RESPONSES}, {MAX_RESPONSES}] than label.num_responses",
            )
        check(self.ranking_beta > 0, "ranking_beta", "must be > 0")
        check(self.collection_rounds >= 1, "collection_rounds", "must be >= 1 (1: no later round)")
        for algorithm in self.group_algorithms:
            check(
                algorithm in GROUP_ALGORITHMS,
                "group_algorithms",
                f"unknown {algorithm!r}; choose from {', '.join(GROUP_ALGORITHMS)}",
            )
            try:  # each run's own config, checked before any run starts (e.g. group.scale is GRPO's only)
                replace(self.group, algorithm=algorithm)
            except PreferError as error:
                reason = str(error).removeprefix("config: ")
                check(False, "group_algorithms", f"{algorithm} with the group section: {reason}")
