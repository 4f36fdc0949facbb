"""prefer: train language models to follow human preferences, during and after pretraining."""

__version__ = "0.1.0"
