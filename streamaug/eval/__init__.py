"""Evaluation: AUC with bootstrap CIs, paired bootstrap, operating point, ROC plots, scoring.

``python -m streamaug.eval score`` scores a checkpoint on shards into a JSON report;
``python -m streamaug.eval compare`` compares score files (see :mod:`streamaug.eval.__main__`);
:func:`score_checkpoint` is the scoring both use.
"""
from streamaug.eval.distances import frechet_distance, kernel_distance  # noqa: F401
from streamaug.eval.realism import discriminator_auc, realism_report  # noqa: F401
from streamaug.eval.score_files import load_scores, save_scores
from streamaug.eval.scoring import score_checkpoint
from streamaug.eval.stats import (
    bootstrap_auc,
    bootstrap_indices,
    bootstrap_weights,
    is_significant,
    operating_point,
    paired_bootstrap,
    paired_bootstrap_seeds,
    plot_roc,
    pooled_bootstrap,
    resampled_auc,
    score_loader,
    sens_spec_at,
    weighted_auc,
)

__all__ = ["bootstrap_auc", "bootstrap_indices", "bootstrap_weights", "is_significant", "load_scores",
           "operating_point", "paired_bootstrap", "paired_bootstrap_seeds", "plot_roc", "pooled_bootstrap",
           "resampled_auc", "save_scores", "score_checkpoint", "score_loader", "sens_spec_at", "weighted_auc"]
