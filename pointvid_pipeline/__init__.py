"""PointVid Pipeline: (video, caption) pairs -> PointVid 3D-aware video dataset (paper §3.1, App. A)."""

__version__ = "0.1.0"
