"""The PHF tasks: which corpus, which scorer, and the paper's hyperparameters (Korbak et al. 2023, Table 2 of
shared/reference/phf-method.md). A task only supplies defaults; every value can be overridden in the config, and
the resolved values are what the run saves."""

from __future__ import annotations

from dataclasses import dataclass

from prefer.errors import PreferError


@dataclass(frozen=True)
class Task:
    name: str
    corpus: str  # default source for `load_documents`
    scorer: str  # scores training segments (SEGMENT_SCORERS) and samples (SCORERS)
    eval_scorers: tuple[str, ...]  # every scorer reported at evaluation; the first is the headline
    threshold: float  # segment score above which a segment is "bad" (conditional training, UL)
    filter_threshold: float  # document mean score above which filtering drops a document
    drop_fraction: float  # conditional training: fraction of segments left untagged
    ul_alpha: float
    rwr_beta: float
    awr_alpha: float
    awr_beta: float
    lr: float  # the paper's learning rate for GPT-2 small; small CPU models use a larger one (see configs)
    # Thresholds from quantiles of the corpus's scores instead (see ObjectiveConfig), where the paper's values were
    # set for another scorer's scale.
    threshold_quantile: float | None = None
    filter_quantile: float | None = None
    eval_threshold: float | None = None  # a sample above it counts as misaligned at evaluation; None = threshold

    @property
    def sample_threshold(self) -> float:
        return self.threshold if self.eval_threshold is None else self.eval_threshold


TASKS: dict[str, Task] = {
    "toxicity": Task(
        name="toxicity",
        corpus="fortunes",
        scorer="toxicity",
        eval_scorers=("toxicity", "toxicity-bilstm"),
        threshold=5.6e-4,
        filter_threshold=7.8e-4,
        drop_fraction=0.01,
        ul_alpha=1.0,
        rwr_beta=10.0,
        awr_alpha=0.5,
        awr_beta=10.0,
        lr=5e-4,
        # The paper's thresholds are Detoxify probabilities on the Pile; alt-profanity-check gives a sentence with no
        # known word its prior (~0.036, the fortunes' median), so 99.96% of fortune sentences exceed 5.6e-4. The
        # worst 10% of sentences are bad instead (0.28 on the fortunes), and filtering drops the worst 10% of
        # documents; samples count as toxic above probability 0.5.
        threshold_quantile=0.9,
        filter_quantile=0.9,
        eval_threshold=0.5,
    ),
    "pii": Task(
        name="pii",
        corpus="changelogs",
        scorer="pii",
        eval_scorers=("pii",),
        threshold=0.0,
        filter_threshold=2.86e-4,
        drop_fraction=0.01,
        ul_alpha=1.0,
        rwr_beta=10.0,
        awr_alpha=0.5,
        awr_beta=0.1,
        lr=5e-4,
    ),
    "pep8": Task(
        name="pep8",
        corpus="stdlib",
        scorer="pep8",
        eval_scorers=("pep8", "pep8-style"),
        threshold=0.0,
        filter_threshold=2.361e-3,
        drop_fraction=0.1,
        ul_alpha=0.01,
        rwr_beta=10.0,
        awr_alpha=0.05,
        awr_beta=1.0,
        lr=8e-4,
    ),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise PreferError(f"task: unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
