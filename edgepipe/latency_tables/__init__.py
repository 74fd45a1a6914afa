"""On-device latency tables of the search space's blocks, and a predictor (a later issue)."""
