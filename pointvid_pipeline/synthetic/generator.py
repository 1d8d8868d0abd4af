"""`pointvid synth`: draw N scene specs from the documented distributions (docs/synthetic_scenes.md).

Seeded and deterministic: the same (count, seed) gives the same JSON. Camera movements are drawn
stratified (every block of len(MOVEMENTS) scenes holds each movement once, in a shuffled order), so
any count of at least len(MOVEMENTS) contains every class of the taxonomy.
"""

from __future__ import annotations

import numpy as np

from pointvid_pipeline.stages.object_prompts import LexicalObjectExtractor
from pointvid_pipeline.synthetic.cameras import FOCUS_HEIGHTS, MOVEMENTS
from pointvid_pipeline.synthetic.scenes import COLOURS, FLOORS, MOTIONS, OBJECT_KINDS, SIZES, TEXTURES, SceneSpec

VALUE_RANGES = {  # movement -> (low, high) of |value|; the sign is drawn for the movements that have one
    "static": (0.0, 0.0),
    "truck": (0.2, 0.4),
    "dolly": (0.15, 0.35),
    "pedestal": (0.12, 0.25),
    "tilt": (8.0, 14.0),
    "pan": (10.0, 20.0),
    "spin": (15.0, 40.0),
    "following": (0.7, 1.0),
    "zoom": (1.3, 1.7),  # zoom out draws the reciprocal
    "orbit": (20.0, 45.0),
}
TWO_WAY = ("truck", "dolly", "pedestal", "tilt", "pan", "spin", "zoom", "orbit")
ELEVATION_DEG, DISTANCE_M, HFOV_DEG_RANGE = (40.0, 55.0), (1.0, 1.3), (44.0, 56.0)
EXTRA_DISTANCE_PER_OBJECT, EXTRA_DISTANCE_ONE_SUBJECT = 0.1, 0.15  # metres beyond two objects / when the view centres on one object
LIGHT_RANGES = {"elevation_deg": (35.0, 85.0), "temperature_k": (2700.0, 7500.0), "intensity": (0.2, 0.6), "ambient": (0.35, 0.7)}
BACKDROP_PROBABILITY = 0.4


def _kind_names() -> dict[str, str]:
    """Kind -> the name the cpu profile's object extractor gives it: kinds sharing one (sphere and ball) never meet in a scene."""
    extractor = LexicalObjectExtractor()
    return {kind: (extractor.extract([kind])[0].names or [kind])[0] for kind in OBJECT_KINDS}


def _draw_objects(motion: str, rng: np.random.Generator, names: dict[str, str]) -> list[str | dict]:
    eligible = [k for k, kind in OBJECT_KINDS.items() if (motion != "roll" or kind.rolls) and (motion != "topple" or kind.stacks)]
    count = int(rng.integers(2, 4 if motion == "roll" else 5))
    chosen: list[str] = []
    for kind in rng.permutation(eligible):
        if names[kind] not in {names[k] for k in chosen}:
            chosen.append(str(kind))
        if len(chosen) == count:
            break
    objects: list[str | dict] = []
    for kind in chosen:
        entry = {"kind": kind, "size": str(rng.choice(list(SIZES)))}
        if OBJECT_KINDS[kind].shape:
            entry.update(colour=str(rng.choice(list(COLOURS))), texture=str(rng.choice(list(TEXTURES))))
        objects.append(entry)
    return objects


def _draw_camera(movement: str, object_count: int, rng: np.random.Generator) -> dict:
    low, high = VALUE_RANGES[movement]
    value = float(rng.uniform(low, high))
    if movement in TWO_WAY and rng.random() < 0.5:
        value = 1.0 / value if movement == "zoom" else -value
    focus = "follow" if movement == "following" else str(rng.choice(["fixed", "follow"], p=[0.7, 0.3]))
    extra = EXTRA_DISTANCE_PER_OBJECT * (object_count - 2) + (EXTRA_DISTANCE_ONE_SUBJECT if focus == "follow" else 0.0)  # keep every object in view
    return {
        "movement": movement,
        "value": round(value, 4),
        "azimuth_deg": round(float(rng.uniform(0.0, 360.0)), 2),
        "elevation_deg": round(float(rng.uniform(*ELEVATION_DEG)), 2),
        "distance": round(float(rng.uniform(*DISTANCE_M)) + extra, 3),
        "hfov_deg": round(float(rng.uniform(*HFOV_DEG_RANGE)), 2),
        "focus": focus,
        "focus_position": str(rng.choice(list(FOCUS_HEIGHTS))),
        "subject": None if focus == "fixed" else int(rng.integers(object_count)),
    }


def _draw_light(rng: np.random.Generator) -> dict:
    light = {"azimuth_deg": round(float(rng.uniform(0.0, 360.0)), 2)}
    light.update({name: round(float(rng.uniform(low, high)), 3) for name, (low, high) in LIGHT_RANGES.items()})
    return light


def generate_scenes(count: int, seed: int) -> list[dict]:
    """`count` scene spec dicts (SceneSpec.from_dict accepts each), named gen<seed>_<index>_<motion>_<movement>."""
    rng = np.random.default_rng(seed)
    names = _kind_names()
    movements = [str(m) for _ in range(-(-count // len(MOVEMENTS))) for m in rng.permutation(list(MOVEMENTS))][:count]
    scenes = []
    for index, movement in enumerate(movements):
        motion = str(rng.choice(MOTIONS))
        objects = _draw_objects(motion, rng, names)
        spec = {
            "name": f"gen{seed}_{index:05d}_{motion}_{movement}",
            "seed": int(rng.integers(2**31)),
            "objects": objects,
            "motion": motion,
            "camera": _draw_camera(movement, len(objects), rng),
            "floor": str(rng.choice(list(FLOORS))),
            "background": str(rng.choice(list(COLOURS))) if rng.random() < BACKDROP_PROBABILITY else None,
            "light": _draw_light(rng),
        }
        SceneSpec.from_dict(spec)  # every drawn spec is a valid one
        scenes.append(spec)
    return scenes
