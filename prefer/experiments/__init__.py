"""Experiments: many runs of the stages on one task, evaluated on one protocol, tabled and plotted.

`pretraining` is Korbak et al. 2023's experiment (one model per objective on the same tokens).
"""

from prefer.experiments.pretraining import experiment, plan

__all__ = ["experiment", "plan"]
