"""Cloud Run functions (2nd gen) entry points and the GCP adapters of the core's ports.

The deployed source root holds `main.py` (this folder's `main.py`, copied there by
`jitc package gcp`) with three HTTP entry points: `intake`, `worker` and `sweep`.
"""
