"""Per-layer energy reports from real firing rates (sdm energy)."""
