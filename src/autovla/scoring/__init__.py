"""PDM score with NAVSIM v1.1 semantics for every data source (docs/scoring.md).

A `MetricCache` holds one scene's scoring inputs in its ego frame; `score_plans` scores a
batch of plans against it.
"""

from autovla.scoring.cache import (
    MAP_TYPES,
    TRACK_TYPES,
    MetricCache,
    MetricCacheError,
    cache_path,
    load_cache,
)

__all__ = [
    "MAP_TYPES",
    "TRACK_TYPES",
    "MetricCache",
    "MetricCacheError",
    "cache_path",
    "load_cache",
]
