"""FAKE stand-in for CoTracker's `hubconf.py`, for the adapter tests only.

Not upstream code (CoTracker is CC-BY-NC and is never vendored). Honours the documented entry point:
`cotracker3_offline(*, pretrained=True)` returns a `CoTrackerPredictor` (a torch.nn.Module whose
`.model` takes the checkpoint's state dict). This fake cannot download weights, so it refuses
`pretrained=True`: callers must pass `pretrained=False` and load the checkpoint themselves.
"""


def cotracker3_offline(*, pretrained: bool = True, **kwargs):
    if pretrained:
        raise RuntimeError("fake co-tracker checkout: pretrained=True would download weights; pass pretrained=False")
    from cotracker.predictor import CoTrackerPredictor

    return CoTrackerPredictor(**kwargs)
