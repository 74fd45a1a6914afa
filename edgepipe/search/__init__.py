"""NetAdapt and MnasNet-style search on measured latency (a later issue)."""
