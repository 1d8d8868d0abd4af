"""Stage logic: one module per curation stage, arrays in, arrays out (no Dagster, no model weights)."""
