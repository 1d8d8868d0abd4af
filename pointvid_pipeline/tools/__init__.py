"""User tools over finished data: shard inspection, dataset statistics, preview pictures."""
