"""Config of `prefer demo --pipeline chat`: RL on a pretrained instruction model, on chat prompts, judged by a
verifier nobody here wrote (IFEval's instruction checkers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefer.config.common import (
    InferenceRuntimeConfig,
    KLConfig,
    LoRAConfig,
    OptimizerConfig,
    RuntimeConfig,
    check,
)
from prefer.config.instructgpt import (
    GroupLossConfig,
    PolicyGradientConfig,
    PolicyGradientTrainConfig,
    PolicyModelConfig,
    RewardSourceConfig,
    RolloutConfig,
)

AUTO = "auto"  # a path the command fills in

# Everyday topics, shipped with the project so that the prompt set is fixed (no host file enters it). The first
# `train_topics` are trained on; the rest are held out for the evaluation.
TOPICS = (
    "the ocean", "a rainy day", "your favourite food", "learning to cook", "a city at night", "winter mornings",
    "a good friend", "trains", "gardening", "the moon", "a library", "riding a bicycle", "coffee", "mountains",
    "a school trip", "birds in spring", "a busy market", "old photographs", "the desert", "a thunderstorm",
    "playing chess", "a lighthouse", "baking bread", "a quiet village", "rivers", "a museum", "autumn leaves",
    "learning a language", "a football match", "the night sky", "an old bridge", "a summer festival",
    "a small boat", "snow", "a bakery", "a long walk", "a train station", "the forest", "a birthday party",
    "a letter from home",
)  # fmt: skip

# IFEval instruction types whose checkers need no NLTK data and fit a short answer (prefer.scorers.instructions).
INSTRUCTION_TYPES = (
    "change_case:english_lowercase",
    "change_case:english_capital",
    "punctuation:no_comma",
    "startend:quotation",
    "startend:end_checker",
    "detectable_format:title",
    "keywords:existence",
    "keywords:forbidden_words",
    "keywords:letter_frequency",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:json_format",
)


def _grpo() -> PolicyGradientConfig:
    """GRPO with LoRA against the judge, sized for a 135M model on a 2-core CPU."""
    return PolicyGradientConfig(
        algorithm="grpo",
        out_dir=AUTO,
        model=PolicyModelConfig(init_from=AUTO),
        prompts=AUTO,
        reward=RewardSourceConfig(scorer=AUTO),
        rollout=RolloutConfig(max_new_tokens=48),
        train=PolicyGradientTrainConfig(iterations=24, batch_size=6, minibatch_size=24, checkpoint_every=4),
        group=GroupLossConfig(size=4),
        kl=KLConfig(coef=0.04),
        optimizer=OptimizerConfig(lr=5e-4, weight_decay=0.0),
        lora=LoRAConfig(r=16, alpha=32.0),
        runtime=RuntimeConfig(progress=True, trackers=[]),
    )


@dataclass(frozen=True)
class ChatEvalConfig:
    """How the starting model and the trained policy are compared on the held-out prompts (both sampled alike)."""

    samples: int = 1  # responses per held-out prompt and model
    temperature: float = 1.0  # the policies' own distribution (GRPO's rollouts), on which the KL is taken
    max_new_tokens: int = 48
    batch_size: int = 32
    show: int = 6  # responses before/after printed and written to samples.md

    def __post_init__(self):
        for name in ("samples", "max_new_tokens", "batch_size"):
            check(getattr(self, name) > 0, f"eval.{name}", "must be positive")
        check(self.temperature > 0, "eval.temperature", "must be > 0 (the KL is taken on sampled responses)")
        check(self.show >= 0, "eval.show", "must be >= 0")


@dataclass(frozen=True)
class ChatConfig:
    """`prefer demo --pipeline chat`: GRPO on a pretrained chat model (default SmolLM2-135M-Instruct, offline) with
    the IFEval checkers' verdict as the reward (misalignment = the share of the prompt's instructions not followed),
    then the held-out verdict, the win rate against the starting model and the KL to it. Prompts: one per (topic,
    instruction type), the instruction written by its own IFEval template with seeded arguments; the first
    `train_topics` topics are trained on, the next `heldout_topics` are held out."""

    out_dir: str = "runs/chat"
    init_from: str = "smollm2-135m-instruct"  # the starting model: a named source, gguf:PATH or a local HF directory
    train_topics: int = 30
    heldout_topics: int = 10
    instruction_types: list[str] = field(default_factory=lambda: list(INSTRUCTION_TYPES))
    loose: bool = False  # reward by IFEval's loose check instead of the strict one (both are reported)
    grpo: PolicyGradientConfig = field(default_factory=_grpo)
    eval: ChatEvalConfig = field(default_factory=ChatEvalConfig)
    runtime: InferenceRuntimeConfig = field(default_factory=InferenceRuntimeConfig)

    def __post_init__(self):
        check(bool(self.init_from), "init_from", "name the starting model")
        check(self.train_topics > 0 and self.heldout_topics > 0, "train_topics", "topic counts must be positive")
        check(
            self.train_topics + self.heldout_topics <= len(TOPICS),
            "heldout_topics",
            f"train_topics + heldout_topics must be <= {len(TOPICS)} (the shipped topics)",
        )
        check(bool(self.instruction_types), "instruction_types", "name at least one IFEval instruction type")
        check(len(set(self.instruction_types)) == len(self.instruction_types), "instruction_types", "a type twice")
        for key, value in (
            ("grpo.out_dir", self.grpo.out_dir),
            ("grpo.prompts", self.grpo.prompts),
            ("grpo.model.init_from", self.grpo.model.init_from),
            ("grpo.reward.scorer", self.grpo.reward.scorer),
        ):
            check(value == AUTO, key, "prefer demo --pipeline chat fills this path in; leave it out")
        check(self.grpo.runtime.seed == 0 and self.grpo.runtime.device == "auto", "grpo.runtime", "use runtime.*")
