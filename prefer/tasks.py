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


# The paper's hyperparameters of each task (Table 2), a row per task in the order of these columns.
TABLE_2_COLUMNS = "threshold filter_threshold drop_fraction ul_alpha rwr_beta awr_alpha awr_beta lr".split()
TABLE_2 = {
    "toxicity": (5.6e-4, 7.8e-4, 0.01, 1.0, 10.0, 0.5, 10.0, 5e-4),
    "pii": (0.0, 2.86e-4, 0.01, 1.0, 10.0, 0.5, 0.1, 5e-4),
    "pep8": (0.0, 2.361e-3, 0.1, 0.01, 10.0, 0.05, 1.0, 8e-4),
}


def _task(name: str, corpus: str, eval_scorers: tuple[str, ...], **calibration) -> Task:
    """The task `name` on `corpus` with its row of Table 2; its headline scorer (the first) scores the segments."""
    paper = dict(zip(TABLE_2_COLUMNS, TABLE_2[name], strict=True))
    return Task(name=name, corpus=corpus, scorer=eval_scorers[0], eval_scorers=eval_scorers, **paper, **calibration)


TASKS: dict[str, Task] = {
    "toxicity": _task(
        "toxicity",
        "fortunes",
        ("toxicity", "toxicity-bilstm"),
        # The paper's thresholds are Detoxify probabilities on the Pile; alt-profanity-check gives a sentence with no
        # known word its prior (~0.036, the fortunes' median), so 99.96% of fortune sentences exceed 5.6e-4. The
        # worst 10% of sentences are bad instead (0.28 on the fortunes), and filtering drops the worst 10% of
        # documents; samples count as toxic above probability 0.5.
        threshold_quantile=0.9,
        filter_quantile=0.9,
        eval_threshold=0.5,
    ),
    "pii": _task("pii", "changelogs", ("pii",)),
    "pep8": _task("pep8", "stdlib", ("pep8", "pep8-style")),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise PreferError(f"task: unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
