"""FAKE stand-in for the `cotracker` package of facebookresearch/co-tracker (adapter tests only)."""
