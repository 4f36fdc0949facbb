"""Labelers that produce the human-feedback files (rankings, demonstrations) of the InstructGPT pipeline.

`synthetic`: a gold scorer stands in for human labelers (Gao et al. 2022), so the whole pipeline runs without
humans and reward over-optimisation is measurable (proxy reward model vs gold scorer).
`app`: human labelers, through the `prefer serve` web app.

The names below load on first use, so `prefer serve` (prefer.labeling.app) starts without importing torch.
"""

__all__ = ["LabelReport", "NothingRanked", "label_synthetic", "rank_by_scores"]


def __getattr__(name):
    if name in __all__:
        from prefer.labeling import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'prefer.labeling' has no attribute {name!r}")
