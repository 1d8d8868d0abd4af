"""Dagster wiring only: assets, resources, checks and the sensor call into plain modules."""
