"""Labelers that produce the human-feedback files (rankings, demonstrations) of the InstructGPT pipeline.

`synthetic`: a gold scorer stands in for human labelers (Gao et al. 2022), so the whole pipeline runs without
humans and reward over-optimisation is measurable (proxy reward model vs gold scorer).
"""

from prefer.labeling.synthetic import LabelReport, label_synthetic, rank_by_scores

__all__ = ["LabelReport", "label_synthetic", "rank_by_scores"]
