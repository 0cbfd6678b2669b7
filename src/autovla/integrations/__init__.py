"""Adapters that let other frameworks (the NAVSIM devkit) run autovla planners."""
