"""Configs of the InstructGPT half (Ouyang et al. 2022): synthetic labelers, SFT, the reward model, PPO(-ptx)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from prefer.config.common import (
    GenerationConfig,
    InferenceRuntimeConfig,
    KLConfig,
    LoRAConfig,
    OptimizerConfig,
    PTXConfig,
    RuntimeConfig,
    ScheduleConfig,
    check,
)
from prefer.config.pretraining import check_micro_batch

MIN_RESPONSES, MAX_RESPONSES = 2, 9  # responses per ranking (the paper: K = 4..9)
LABEL_BLOCKS = ("none", "bad", "both")


def check_lora_parallel(lora: LoRAConfig, runtime: RuntimeConfig) -> None:
    check(
        not lora.enabled or runtime.parallel == "ddp",
        "lora.r",
        "LoRA runs in one process or under DDP; with runtime.parallel=fsdp use full finetuning (lora.r=0)",
    )


@dataclass(frozen=True)
class FinetuneModelConfig:
    """The pretrained causal LM a post-training stage starts from."""

    init_from: str = ""  # any local Hugging Face causal LM directory (required)
    context: int | None = None  # cap on the sequence length; None = the model's
    dropout: float = 0.0  # applied to every dropout of the loaded model (the paper's SFT: 0.2)

    def __post_init__(self):
        check(self.context is None or self.context >= 8, "model.context", "must be >= 8")
        check(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class EpochTrainConfig:
    """Length and batch geometry of a stage that trains for a number of epochs over a data file."""

    epochs: float = 1.0
    batch_size: int = 16  # examples (SFT) or prompts with all their responses (reward) per optimizer step
    micro_batch_size: int | None = None  # per forward pass; None = batch_size (no accumulation)
    eval_every: int = 50  # steps between held-out evaluations
    checkpoint_every: int = 100  # steps between resumable checkpoints

    def __post_init__(self):
        check(self.epochs > 0, "train.epochs", "must be positive")
        check(self.batch_size > 0, "train.batch_size", "must be positive")
        check_micro_batch(self.batch_size, self.micro_batch_size)
        check(self.eval_every > 0 and self.checkpoint_every > 0, "train.eval_every", "intervals must be positive")


@dataclass(frozen=True)
class SFTDataConfig:
    # JSONL ({"prompt", "response"}, {"prompt", "completion"} or {"messages": [...]} chats), a saved data set
    # directory, or hf:NAME[:SPLIT] (required)
    demonstrations: str = ""
    validation_fraction: float = 0.05  # of the demonstrations, held out for the loss
    packing: bool = False  # concatenate examples into full blocks (same response-only mask)

    def __post_init__(self):
        check(0 <= self.validation_fraction < 1, "data.validation_fraction", "must be in [0, 1)")


@dataclass(frozen=True)
class SFTConfig:
    """Supervised finetuning on demonstrations: loss on response tokens (+ eos) only."""

    out_dir: str = "runs/sft"
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    # the paper: 16 epochs, with the checkpoint chosen by reward-model score
    train: EpochTrainConfig = field(default_factory=lambda: EpochTrainConfig(epochs=4.0, batch_size=16))
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_fraction=0.05))
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # low-rank adapters instead of full finetuning (r > 0)

    def __post_init__(self):
        check(bool(self.data.demonstrations), "data.demonstrations", "a demonstrations JSONL file is required")
        check(bool(self.model.init_from), "model.init_from", "the causal LM to finetune is required")
        check(self.optimizer.lr is not None, "optimizer.lr", "SFT has no task default; set a learning rate")
        check_lora_parallel(self.lora, self.runtime)


@dataclass(frozen=True)
class RewardDataConfig:
    # JSONL ({"prompt", "responses", "ranking"} or pairs {"prompt", "chosen", "rejected"}), a saved data set
    # directory, or hf:NAME[:SPLIT] (required)
    rankings: str = ""
    demonstrations: str | None = None  # the bias makes their mean reward 0; None = each ranking's best response
    validation_fraction: float = 0.1  # of the prompts, held out for pairwise accuracy

    def __post_init__(self):
        check(0 <= self.validation_fraction < 1, "data.validation_fraction", "must be in [0, 1)")


@dataclass(frozen=True)
class RewardConfig:
    """Reward model on K-way rankings: trunk of `model.init_from` (e.g. the SFT model) + a scalar head read at the
    last real token. `train.batch_size` counts PROMPTS, each with all its K responses (one batch element)."""

    out_dir: str = "runs/reward"
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    # the paper: one epoch; more overfits
    train: EpochTrainConfig = field(default_factory=lambda: EpochTrainConfig(epochs=1.0, batch_size=8))
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=5e-5))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_fraction=0.05))
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # low-rank adapters instead of full finetuning (r > 0)

    def __post_init__(self):
        check(bool(self.data.rankings), "data.rankings", "a rankings JSONL file is required")
        check(
            bool(self.model.init_from), "model.init_from", "the causal LM whose trunk the reward model uses is required"
        )
        check(
            self.optimizer.lr is not None, "optimizer.lr", "the reward model has no task default; set a learning rate"
        )
        check_lora_parallel(self.lora, self.runtime)


@dataclass(frozen=True)
class LabelConfig:
    """Synthetic labelers: K samples per prompt from `model`, ranked by a gold scorer (lower misalignment is
    better) with optional Gaussian noise; writes rankings and best-of-K demonstrations."""

    model: str = ""  # a local HF causal LM to sample from (required)
    prompts: str = ""  # JSONL: {"prompt"} (required)
    scorer: str = "pep8"  # any `get_scorer` name (e.g. pep8, pii, rm:/path/to/reward_model)
    rankings_out: str = "rankings.jsonl"
    demonstrations_out: str = "demonstrations.jsonl"
    num_responses: int = 4  # K, 2..9 (the paper: 4..9)
    noise: float = 0.0  # std of the Gaussian noise on the scores, relative to the scores' std
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    block: str = "both"  # control tokens never sampled: none | bad | both
    batch_size: int = 64  # sequences per forward pass
    # runtime.seed: the responses' draws and the labelers' noise
    runtime: InferenceRuntimeConfig = field(default_factory=InferenceRuntimeConfig)

    def __post_init__(self):
        check(bool(self.model), "model", "the model to sample responses from is required")
        check(bool(self.prompts), "prompts", "a prompts JSONL file is required")
        check(
            MIN_RESPONSES <= self.num_responses <= MAX_RESPONSES,
            "num_responses",
            f"must be in [{MIN_RESPONSES}, {MAX_RESPONSES}]",
        )
        check(self.noise >= 0, "noise", "must be >= 0")
        self.generation.check("generation")
        check(self.block in LABEL_BLOCKS, "block", f"choose one of {', '.join(LABEL_BLOCKS)}")
        check(self.batch_size > 0, "batch_size", "must be positive")


@dataclass(frozen=True)
class RewardSourceConfig:
    """What PPO maximises, and what it is judged by."""

    scorer: str | None = None  # proxy reward: any scorer name (pep8, pii, rm:DIR); reward = -score; None = rm:<model>
    model: str | None = None  # reward model directory: the value model starts from it (InstructGPT)
    gold_scorer: str | None = None  # scored on every rollout, never rewarded: measures over-optimisation
    missing_eos_penalty: float | None = None  # subtracted from the reward of a response that never stops


@dataclass(frozen=True)
class RolloutConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # sampling temperature; log-probs for the ratio and the KL use the same one
    # Episodes sampled together in one KV-cached loop (each such chunk draws from its own seeded generator, so
    # this sets which random numbers an episode gets); None = train.micro_batch_size. Larger is faster (fewer
    # sequential decoding loops; bench/ppo_vs_trl.py) and does not change the update, only the draws.
    sample_batch_size: int | None = None

    def __post_init__(self):
        check(self.max_new_tokens > 0, "rollout.max_new_tokens", "must be positive")
        check(self.temperature > 0, "rollout.temperature", "must be > 0 (PPO needs a stochastic policy)")
        if self.sample_batch_size is not None:
            check(self.sample_batch_size > 0, "rollout.sample_batch_size", "must be positive (or null)")


@dataclass(frozen=True)
class PPOLossConfig:
    """The clipped surrogate of Schulman et al. 2017 (Eq. 7), the clipped value loss, GAE."""

    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    vf_coef: float = 0.1

    def __post_init__(self):
        check(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "ppo.gamma", "gamma and lam must be in [0, 1]")
        check(self.clip_range > 0 and self.value_clip_range > 0, "ppo.clip_range", "clip ranges must be positive")
        check(self.vf_coef >= 0, "ppo.vf_coef", "must be >= 0")


# ------------------------------------------------------------------ beyond PPO: DPO / IPO / listwise, RLOO / GRPO

DPO_LOSS_NAMES = ("dpo", "ipo", "listwise")  # the keys of prefer.objectives.DPO_LOSSES (a test checks they agree)
# losses on unpaired binary feedback (data.feedback): the keys of prefer.objectives.FEEDBACK_LOSSES
FEEDBACK_LOSS_NAMES = ("kto",)
DIRECT_LOSS_NAMES = DPO_LOSS_NAMES + FEEDBACK_LOSS_NAMES  # every dpo.loss


@dataclass(frozen=True)
class DPODataConfig:
    """Rankings, as `prefer reward` reads them (demonstrations go to `prefer sft`, whose model DPO starts from), or,
    for dpo.loss=kto, unpaired binary feedback."""

    rankings: str = ""  # JSONL: {"prompt", "responses", "ranking"} or pairs (chosen/rejected) (dpo, ipo, listwise)
    feedback: str = ""  # JSONL: {"prompt", "completion", "label": true|false} (TRL's unpaired format) (kto)
    # of the prompts (kto: of the examples), held out for implicit-reward accuracy, margins and the KL
    validation_fraction: float = 0.1

    def __post_init__(self):
        check(0 <= self.validation_fraction < 1, "data.validation_fraction", "must be in [0, 1)")


@dataclass(frozen=True)
class DPOModelConfig:
    """The policy's starting point and the frozen reference."""

    init_from: str = ""  # the SFT model directory: the policy starts here (required)
    reference: str | None = None  # the frozen reference; None = init_from (DPO's reference is the SFT model)
    context: int | None = None  # cap on the sequence length; None = the model's
    dropout: float = 0.0  # applied to every dropout of the policy while training

    def __post_init__(self):
        check(self.context is None or self.context >= 8, "model.context", "must be >= 8")
        check(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class DPOLossConfig:
    """Which direct preference loss, and its strength (prefer.objectives.preference)."""

    # dpo (all C(K,2) pairs) | ipo | listwise (Plackett-Luce over the whole ranking) | kto (binary feedback)
    loss: str = "dpo"
    beta: float = 0.1  # DPO / listwise / KTO: the KL-regularisation strength (Rafailov et al. 2023)
    tau: float = 0.1  # IPO: the regularisation; the target log-ratio margin is 1/(2 tau) (Azar et al. 2023)
    # KTO (Ethayarajh et al. 2024): lambda_D and lambda_U, the weights of desirable and undesirable examples; the
    # paper's advice (Eq. 8): lambda_D n_D / (lambda_U n_U) in [1, 4/3] (the stage warns outside it)
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __post_init__(self):
        check(
            self.loss in DIRECT_LOSS_NAMES,
            "dpo.loss",
            f"unknown {self.loss!r}; choose one of {', '.join(DIRECT_LOSS_NAMES)}",
        )
        check(self.beta > 0, "dpo.beta", "must be > 0")
        check(self.tau > 0, "dpo.tau", "must be > 0")
        check(self.desirable_weight > 0, "dpo.desirable_weight", "must be > 0")
        check(self.undesirable_weight > 0, "dpo.undesirable_weight", "must be > 0")


@dataclass(frozen=True)
class DPOEvalConfig:
    """Held-out implicit-reward accuracy and margins, and the KL to the reference on samples of the policy.

    The KL is estimated on samples at temperature 1 for the held-out rankings' prompts (the training ones without a
    held-out split), in nats per response."""

    kl_samples: int = 32  # samples per evaluation for the KL estimate; 0 = no KL
    max_new_tokens: int = 32

    def __post_init__(self):
        check(self.kl_samples >= 0, "eval.kl_samples", "must be >= 0")
        check(self.max_new_tokens > 0, "eval.max_new_tokens", "must be positive")


@dataclass(frozen=True)
class DPOConfig:
    """Direct preference optimisation on K-way rankings (DPO, IPO or listwise DPO) from the SFT model, against the
    frozen reference, whose log-probabilities of every response are computed once before training.
    `train.batch_size` counts PROMPTS, each with all its K responses (one batch element, as for the reward model).
    dpo.loss=kto trains on unpaired binary feedback (data.feedback) instead, and `train.batch_size` counts examples."""

    out_dir: str = "runs/dpo"
    data: DPODataConfig = field(default_factory=DPODataConfig)
    model: DPOModelConfig = field(default_factory=DPOModelConfig)
    dpo: DPOLossConfig = field(default_factory=DPOLossConfig)
    train: EpochTrainConfig = field(default_factory=lambda: EpochTrainConfig(epochs=1.0, batch_size=8))
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-5, weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_fraction=0.1))
    eval: DPOEvalConfig = field(default_factory=DPOEvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # r > 0: the policy trains adapters; with model.reference unset the frozen reference is the same trunk with
    # them disabled (one model in memory, not two)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def __post_init__(self):
        if self.dpo.loss in FEEDBACK_LOSS_NAMES:
            check(bool(self.data.feedback), "data.feedback", f"dpo.loss={self.dpo.loss} needs a binary-feedback file")
            check(not self.data.rankings, "data.rankings", f"dpo.loss={self.dpo.loss} trains on data.feedback only")
        else:
            check(bool(self.data.rankings), "data.rankings", "a rankings JSONL file is required")
            check(not self.data.feedback, "data.feedback", "binary feedback trains with dpo.loss=kto only")
        check(bool(self.model.init_from), "model.init_from", "the SFT model directory is required")
        check(self.optimizer.lr is not None, "optimizer.lr", "DPO has no task default; set a learning rate")
        check_lora_parallel(self.lora, self.runtime)


# ------------------------------------------------------------------ policy-gradient RL: PPO, RLOO, GRPO

POLICY_GRADIENT_ALGORITHMS = ("ppo", "rloo", "grpo")  # the rows of prefer.rl.ALGORITHMS (a test checks they agree)
GROUP_ALGORITHMS = ("rloo", "grpo")  # critic-free: K samples per prompt, the baseline from the others


@dataclass(frozen=True)
class PolicyModelConfig:
    """The policy's starting point and the frozen KL reference."""

    init_from: str = ""  # the SFT model directory: the policy starts here (required)
    # the frozen KL reference (same tokenizer); None = init_from (with LoRA: the policy's trunk, adapters off)
    reference: str | None = None


@dataclass(frozen=True)
class PolicyGradientTrainConfig:
    iterations: int = 100  # rollout batches
    # PROMPTS per iteration; each gets group.size samples (PPO: 1, so episodes = prompts); RLOO / GRPO default: 16
    batch_size: int = 64
    minibatch_size: int = 16  # episodes (responses) per optimizer step
    micro_batch_size: int | None = None  # episodes per forward pass; None = minibatch_size (no accumulation)
    epochs: int = 1  # passes over each batch (PPO's epochs, GRPO's mu); RLOO is on-policy REINFORCE: 1
    checkpoint_every: int = 10  # iterations between resumable checkpoints
    log_samples: int = 4  # responses per iteration written to samples.jsonl

    def __post_init__(self):
        for name in ("iterations", "batch_size", "minibatch_size", "epochs", "checkpoint_every"):
            check(getattr(self, name) > 0, f"train.{name}", "must be positive")
        if self.micro_batch_size is not None:
            check(
                self.micro_batch_size > 0 and self.minibatch_size % self.micro_batch_size == 0,
                "train.micro_batch_size",
                f"must divide train.minibatch_size ({self.minibatch_size})",
            )
        check(self.log_samples >= 0, "train.log_samples", "must be >= 0")


@dataclass(frozen=True)
class GroupLossConfig:
    """RLOO / GRPO's own settings (prefer.objectives.critic_free); read by algorithm=rloo | grpo only."""

    size: int = 4  # K samples per prompt (the group)
    clip_range: float = 0.2  # GRPO's token ratio clip; RLOO's sequence ratio clip on off-policy minibatches
    scale: bool = True  # GRPO: divide advantages by the group's std (false: Dr. GRPO's centred advantages)

    def __post_init__(self):
        check(self.size >= 2, "group.size", "needs >= 2 samples per prompt (the baseline comes from the others)")
        check(self.clip_range > 0, "group.clip_range", "must be positive")


# What differs between the algorithms' defaults, as dotted keys over the fields' own (which are PPO's). The loader
# (prefer.config.load_config and build_config) lays the chosen algorithm's row under the YAML file and the
# overrides, so `prefer ppo algorithm=grpo` and `prefer grpo` (its alias) start from the same values, and a key
# given explicitly always wins. A PolicyGradientConfig(...) built in Python gets the fields' defaults.
_CRITIC_FREE_DEFAULTS = {"out_dir": "runs/grpo", "train.batch_size": 16, "kl.coef": 0.04}  # Shao et al.: 0.04
ALGORITHM_DEFAULTS: dict[str, dict] = {"ppo": {}, "rloo": _CRITIC_FREE_DEFAULTS, "grpo": _CRITIC_FREE_DEFAULTS}


def _section_keys(section: str, cls: type, readers: tuple[str, ...]) -> dict:
    return {f"{section}.{item.name}": (item.default, readers) for item in fields(cls)}


# Keys only some algorithms read: key -> (default, the algorithms that read it). Set to anything else under another
# algorithm, such a key is refused at construction (the run would ignore it).
READ_ONLY_BY: dict[str, tuple] = {
    "value_trunk": ("separate", ("ppo",)),
    **_section_keys("ppo", PPOLossConfig, ("ppo",)),
    **_section_keys("group", GroupLossConfig, GROUP_ALGORITHMS),
    "group.scale": (GroupLossConfig.scale, ("grpo",)),
}


@dataclass(frozen=True)
class PolicyGradientConfig:
    """Policy-gradient RL against a scorer or reward model, with a KL penalty to the frozen reference (the SFT model)
    and PPO-ptx (Ouyang et al. 2022, Sec. 3.5 and Eq. 2): PPO with a critic (the clipped surrogate, GAE), or
    critic-free with K samples per prompt: RLOO's leave-one-out baseline (the KL folded into the reward, as PPO does)
    or GRPO's group-normalised advantages (`kl.coef` x the k3 estimator as a loss term; group.scale=false: Dr. GRPO).
    PPO's defaults are the paper's where it gives one (beta 0.02, gamma 1, clip 0.2, one epoch, temperature 1),
    scaled down in batch size for the CPU; RLOO / GRPO default to 16 prompts, kl.coef 0.04 (Shao et al. 2024) and
    out_dir runs/grpo. `reward.model` starts PPO's critic; for RLOO / GRPO it only sets the default scorer."""

    algorithm: str = "ppo"  # ppo | rloo | grpo (`prefer grpo` = `prefer ppo algorithm=grpo`, GRPO's defaults)
    out_dir: str = "runs/ppo"  # RLOO / GRPO default: runs/grpo
    model: PolicyModelConfig = field(default_factory=PolicyModelConfig)
    prompts: str = ""  # prompts JSONL ({"prompt": str}, or {"messages": [...]} chats, per line)
    reward: RewardSourceConfig = field(default_factory=RewardSourceConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: PolicyGradientTrainConfig = field(default_factory=PolicyGradientTrainConfig)
    ppo: PPOLossConfig = field(default_factory=PPOLossConfig)  # read by algorithm=ppo only
    group: GroupLossConfig = field(default_factory=GroupLossConfig)  # read by algorithm=rloo | grpo only
    # the KL penalty to the reference (RLOO / GRPO default kl.coef: 0.04)
    kl: KLConfig = field(default_factory=KLConfig)
    ptx: PTXConfig = field(default_factory=PTXConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-5, weight_decay=0.0))
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # r > 0: the policy trains adapters; with model.reference unset the frozen reference is the same trunk with
    # them disabled (one model in memory, not two); PPO's value model gets adapters of its own
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # PPO only. separate: the critic is a trunk of its own (the reward model's, InstructGPT; LoRA: with its own
    # adapters); shared: a zero-initialised value head on the policy's trunk (one process): one model in memory for
    # policy, reference (with LoRA) and critic, and the value loss trains the policy's trunk too
    value_trunk: str = "separate"

    @staticmethod
    def defaults_for(values) -> dict:
        """The chosen algorithm's own defaults (ALGORITHM_DEFAULTS), for the loader; `values` maps `algorithm`."""
        return ALGORITHM_DEFAULTS.get(values.get("algorithm") or "ppo", {})

    @property
    def group_size(self) -> int:
        """K, the samples per prompt: 1 for PPO."""
        return self.group.size if self.algorithm in GROUP_ALGORITHMS else 1

    @property
    def loss(self) -> PPOLossConfig | GroupLossConfig:
        """The chosen algorithm's own hyperparameters: the `ppo` section or the `group` section."""
        return self.group if self.algorithm in GROUP_ALGORITHMS else self.ppo

    def __post_init__(self):
        check(
            self.algorithm in POLICY_GRADIENT_ALGORITHMS,
            "algorithm",
            f"unknown {self.algorithm!r}; choose one of {' | '.join(POLICY_GRADIENT_ALGORITHMS)}",
        )
        for key, (default, readers) in READ_ONLY_BY.items():
            section, _, name = key.rpartition(".")
            value = getattr(getattr(self, section) if section else self, name)
            check(
                self.algorithm in readers or value == default,
                key,
                f"read by algorithm={' | '.join(readers)} only; this config's algorithm is {self.algorithm}",
            )
        check(bool(self.model.init_from), "model.init_from", "the SFT model directory is required")
        check(self.value_trunk in ("separate", "shared"), "value_trunk", "choose separate | shared")
        check(bool(self.prompts), "prompts", "a prompts JSONL file is required")
        check(
            self.reward.scorer is not None or self.reward.model is not None,
            "reward.scorer",
            "name a scorer (e.g. pep8, rm:DIR) or give reward.model",
        )
        check(
            self.optimizer.lr is not None, "optimizer.lr", f"{self.algorithm} has no task default; set a learning rate"
        )
        check_lora_parallel(self.lora, self.runtime)
        check(
            not self.runtime.gradient_checkpointing,
            "runtime.gradient_checkpointing",
            "the policy-gradient loop runs its models in eval mode (dropout off), where Hugging Face models never "
            "checkpoint; lora.r > 0 is its memory saver",
        )
        episodes = self.train.batch_size * self.group_size
        check(
            episodes % self.train.minibatch_size == 0,
            "train.minibatch_size",
            f"must divide train.batch_size ({episodes})"
            if self.group_size == 1
            else f"must divide the episodes per iteration (train.batch_size x group.size = {episodes})",
        )
        check(
            self.algorithm != "rloo" or self.train.epochs == 1,
            "train.epochs",
            "RLOO is on-policy REINFORCE: 1 pass per batch",
        )
