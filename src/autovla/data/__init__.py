"""Driving data: the schema, manifests, meta-action labels and dataset tools."""

from autovla.data.manifest import iter_samples, load_samples, write_manifest
from autovla.data.schema import DrivingSample, EgoState, Preference, SceneFacts, SceneObject

__all__ = [
    "DrivingSample",
    "EgoState",
    "Preference",
    "SceneFacts",
    "SceneObject",
    "iter_samples",
    "load_samples",
    "write_manifest",
]
