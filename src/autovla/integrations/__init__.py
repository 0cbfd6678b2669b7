"""Clients for other environments: the NAVSIM devkit agent (in process or over HTTP), a CARLA
leaderboard / Bench2Drive agent and the `autovla serve` client. Importing them needs only the
standard library, numpy and Pillow (the in-process NAVSIM mode loads torch when used)."""
