"""Where data lives: manifests, the stage store, shard assignment, the shard format, publishing."""
