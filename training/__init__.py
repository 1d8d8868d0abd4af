"""Video-point diffusion training on PointVid shards (paper §3.2-3.3). Imports no Dagster."""
