"""ml_collections configs: `default.py` and small hardware deltas on it."""
