"""`pointvid synth`: draw N scene specs from the documented distributions (docs/synthetic_scenes.md).

Seeded and deterministic: the same (count, seed, cameras) gives the same JSON. Scene names carry all three
(gen<seed>_<count>x<cameras>_<index>_...), so two different draws never share a sample key: a data directory
that curated one draw gives another one new shards instead of mixing two scenes under one key. Camera movements are drawn
stratified (every block of len(MOVEMENTS) scenes holds each movement once, in a shuffled order), so
any count of at least len(MOVEMENTS) contains every class of the taxonomy.

With `cameras` K > 1 every scene is a synchronized rig of K cameras. The scenes and their first camera
are exactly those of K = 1 (the extra cameras come from a second random stream seeded by (seed, 1));
camera k of a block of scenes takes the block's movement order turned by an offset drawn per block, the
K offsets distinct, so the cameras of one scene move differently and every camera index is stratified too.
"""

from __future__ import annotations

import json

import numpy as np

from pointvid_pipeline.rejections import ConfigurationError
from pointvid_pipeline.stages.object_prompts import LexicalObjectExtractor
from pointvid_pipeline.synthetic.cameras import FOCUS_HEIGHTS, MAX_RIG_CAMERAS, MOVEMENTS
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
RIG_STREAM = 1  # the extra cameras of a rig are drawn from default_rng((seed, RIG_STREAM))


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


def _rig_movements(first: list[str], cameras: int, rng: np.random.Generator) -> list[list[str]]:
    """Per scene, the movements of its `cameras` cameras: the first camera's, then the same block order turned by distinct offsets."""
    classes = len(MOVEMENTS)
    rigs = []
    for block in range(0, len(first), classes):
        order = list(first[block : block + classes])
        order += [m for m in MOVEMENTS if m not in order]  # a last, partial block: its order, then the movements it lacks
        offsets = [0, *(int(k) for k in rng.choice(np.arange(1, classes), cameras - 1, replace=False))]
        rigs += [[order[(i + offset) % classes] for offset in offsets] for i in range(min(classes, len(first) - block))]
    return rigs


def _check_draw(count: int, seed: int, cameras: int) -> None:
    """ConfigurationError (one line, naming the setting) for a draw generate_scenes cannot make."""
    if count < 1:
        raise ConfigurationError(f"count must be at least 1 scene, got {count}")
    if seed < 0:
        raise ConfigurationError(f"seed must be a whole number of at least 0, got {seed}")
    if not 1 <= cameras <= MAX_RIG_CAMERAS:
        raise ConfigurationError(f"cameras must be in [1, {MAX_RIG_CAMERAS}]: a rig has at most {MAX_RIG_CAMERAS} cameras (one per movement of the taxonomy), got {cameras}")


def generate_scenes(count: int, seed: int, cameras: int = 1) -> list[dict]:
    """`count` scene spec dicts (SceneSpec.from_dict accepts each), named gen<seed>_<count>x<cameras>_<index>_<motion>_<movement>;
    with `cameras` > 1 each is a rig of that many programs (a list) and ends in _rig instead of the movement."""
    _check_draw(count, seed, cameras)
    rng, rig_rng = np.random.default_rng(seed), np.random.default_rng((seed, RIG_STREAM))
    names = _kind_names()
    movements = [str(m) for _ in range(-(-count // len(MOVEMENTS))) for m in rng.permutation(list(MOVEMENTS))][:count]
    rigs = _rig_movements(movements, cameras, rig_rng)
    scenes = []
    for index, movement in enumerate(movements):
        motion = str(rng.choice(MOTIONS))
        objects = _draw_objects(motion, rng, names)
        scene_seed = int(rng.integers(2**31))
        camera = _draw_camera(movement, len(objects), rng)
        spec = {
            "name": f"gen{seed}_{count}x{cameras}_{index:05d}_{motion}_{movement if cameras == 1 else 'rig'}",
            "seed": scene_seed,
            "objects": objects,
            "motion": motion,
            "camera": camera if cameras == 1 else [camera, *(_draw_camera(m, len(objects), rig_rng) for m in rigs[index][1:])],
            "floor": str(rng.choice(list(FLOORS))),
            "background": str(rng.choice(list(COLOURS))) if rng.random() < BACKDROP_PROBABILITY else None,
            "light": _draw_light(rng),
        }
        SceneSpec.from_dict(spec)  # every drawn spec is a valid one
        scenes.append(spec)
    return scenes


def scenes_json(scenes: list[dict]) -> str:
    """The scenes file's text: one JSON list, one spec a line (the same scenes give the same bytes)."""
    return "[\n" + ",\n".join(json.dumps(scene) for scene in scenes) + "\n]\n"
