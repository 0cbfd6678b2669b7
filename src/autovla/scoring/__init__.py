"""PDM score with NAVSIM v1.1 semantics for every data source (docs/scoring.md).

A `MetricCache` holds one scene's scoring inputs in its ego frame; `score_plans` scores a
batch of plans against it; `attach_pdm_closed` fills in a new cache's PDM-Closed reference.
"""

from autovla.scoring.cache import (
    MAP_TYPES,
    TRACK_TYPES,
    MetricCache,
    MetricCacheError,
    cache_path,
    load_cache,
)
from autovla.scoring.pdm_closed import Detections, attach_pdm_closed, pdm_closed_trajectory
from autovla.scoring.pdm_score import PDMResults, score_plans, score_sample

__all__ = [
    "MAP_TYPES",
    "TRACK_TYPES",
    "Detections",
    "MetricCache",
    "MetricCacheError",
    "PDMResults",
    "attach_pdm_closed",
    "cache_path",
    "load_cache",
    "pdm_closed_trajectory",
    "score_plans",
    "score_sample",
]
