"""The paper profile's model backends (LLM, Grounded-SAM2, ZoeDepth, trackers) and the registry that picks them."""
