"""Converters from real datasets (NAVSIM/OpenScene, nuScenes, Waymo E2E) to DrivingSample."""
