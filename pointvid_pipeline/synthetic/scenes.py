"""Synthetic scenes rendered on the CPU with pybullet: rigid objects dropped, pushed, thrown, rolled or toppled on a textured floor.

These clips are the pipeline's default input because the renderer knows everything exactly: metric
depth, instance masks, camera poses and intrinsics, and the true trajectory of every frame-0 pixel.
Downstream stages can therefore run (and be checked) without any real video, model weights or GPU.

A scene spec (assets/scenes/default_scenes.json, or what `pointvid synth` draws; docs/synthetic_scenes.md)
names objects, a motion, a floor, a camera program (synthetic/cameras.py) and optionally a background
and a light. Whatever it leaves out is drawn from its seed, always in the same order, so a spec that
says less renders exactly as it did before the format grew.

TinyRenderer's pixel grid, measured by fitting rendered floor depth against ray/plane intersection:
with a standard OpenGL projection matrix it samples pixel (u, v) (pixel-centre convention of
`clip.py`) where the pinhole principal point is (W/2, H/2 - 1), and its depth buffer is the usual
OpenGL non-linear depth of the planar z-depth. `projection_matrix` therefore shifts the frustum by
half a pixel so that the principal point lands exactly on ((W-1)/2, (H-1)/2).

The floor is our own textured square mesh rather than pybullet_data's plane.urdf, whose texture
repeats only every 2 m and leaves most frames on one or two flat checker squares.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pybullet as p
import pybullet_data

from pointvid_pipeline.clip import (
    FRAME_COUNT,
    FRAME_HEIGHT,
    FRAME_WIDTH,
    SYNTHETIC_CAPTION_TAG,
    Clip,
    SceneTruth,
    project,
    unproject,
)
from pointvid_pipeline.synthetic.cameras import FOCUS_FRACTIONS, FOCUS_HEIGHTS, HFOV_DEG, MAX_RIG_CAMERAS, MOVEMENTS, SIGNED_DEFAULTS, CameraProgram, camera_pose, intrinsics_for_hfov

log = logging.getLogger(__name__)
SCENES_DIR = Path(__file__).resolve().parents[2] / "assets" / "scenes"
DEFAULT_SCENES_PATH = SCENES_DIR / "default_scenes.json"

PHYSICS_HZ = 240
VIDEO_FPS = 20
SUBSTEPS_PER_FRAME = PHYSICS_HZ // VIDEO_FPS
SETTLE_SECONDS = 0.5  # pushed objects come to rest on the floor before the push
NEAR, FAR = 0.05, 10.0  # metres; every camera looks down steeply enough that the floor fills the frame
VISIBILITY_ABS_TOL, VISIBILITY_REL_TOL = 0.01, 0.01  # metres, fraction of depth
LIGHT_DIRECTION = (0.5, -0.4, 1.0)  # the renderer's light when a spec names none
SCENE_NAME = re.compile(r"^[a-z0-9_]+$")
MOTIONS = ("drop", "push", "slide", "collide", "throw", "roll", "topple")


@dataclass(frozen=True)
class ObjectKind:
    """How one caption noun is built in pybullet: a URDF or mesh of pybullet_data, or a primitive shape."""

    adjective: str  # colour/material word the caption puts before the kind (procedural kinds: their drawn colour)
    urdf: str | None = None  # relative to pybullet_data
    scale: float = 1.0
    rgba: tuple[float, float, float, float] | None = None
    texture: str | None = None  # image inside pybullet_data pasted over the mesh's own material
    mesh: str | None = None  # an .obj of pybullet_data, collision = its convex hull
    shape: str | None = None  # primitive: box, sphere, cylinder, capsule (half extents below, metres)
    extents: tuple[float, ...] = ()
    rolls: bool = False  # round enough to roll down a ramp
    stacks: bool = False  # flat top and bottom: can be stacked


OBJECT_KINDS: dict[str, ObjectKind] = {
    "duck": ObjectKind("yellow", "duck_vhacd.urdf", 2.2),
    "cube": ObjectKind("white", "cube_small.urdf", 2.8, texture="cube.png", stacks=True),
    "ball": ObjectKind("red", "sphere_small.urdf", 2.8, rgba=(1.0, 0.3, 0.25, 1.0), rolls=True),
    "soccer ball": ObjectKind("black and white", "soccerball.urdf", 0.18, rolls=True),
    "teddy bear": ObjectKind("brown", "teddy_vhacd.urdf", 2.2, rgba=(0.65, 0.42, 0.22, 1.0)),
    "block": ObjectKind("wooden", "jenga/jenga.urdf", 1.4, stacks=True),
    "lego brick": ObjectKind("grey", "lego/lego.urdf", 4.0, rgba=(0.6, 0.6, 0.62, 1.0), stacks=True),
    "mug": ObjectKind("red", "objects/mug.urdf", 1.3),
    "domino": ObjectKind("black and white", "domino/domino.urdf", 3.5),
    "bunny": ObjectKind("white", mesh="bunny.obj", scale=0.1, rgba=(0.9, 0.88, 0.85, 1.0)),
    "box": ObjectKind("", shape="box", extents=(0.06, 0.045, 0.04), stacks=True),
    "sphere": ObjectKind("", shape="sphere", extents=(0.06,), rolls=True),
    "cylinder": ObjectKind("", shape="cylinder", extents=(0.045, 0.06), rolls=True),
    "capsule": ObjectKind("", shape="capsule", extents=(0.035, 0.05), rolls=True),
}
PROCEDURAL_KINDS = tuple(name for name, kind in OBJECT_KINDS.items() if kind.shape)
SIZES = {"small": 0.75, "medium": 1.0, "large": 1.35}  # scale of the kind's own size
COLOURS = {
    "red": (0.85, 0.15, 0.12), "orange": (0.95, 0.5, 0.1), "yellow": (0.95, 0.85, 0.15), "green": (0.2, 0.65, 0.25),
    "blue": (0.15, 0.35, 0.85), "purple": (0.5, 0.25, 0.7), "pink": (0.95, 0.5, 0.7), "white": (0.92, 0.92, 0.92),
    "black": (0.12, 0.12, 0.12), "grey": (0.5, 0.5, 0.5), "brown": (0.5, 0.32, 0.18),
}  # fmt: skip
TEXTURES = {"plain": None, "checkered": "checker_grid.jpg", "tiled": "tex256.png"}  # name -> image in pybullet_data

FLOORS: dict[str, tuple[str, float, str]] = {  # name -> (texture inside pybullet_data, metres per repeat, caption)
    "blue_checker": ("checker_blue.png", 0.3, "a blue checkered floor"),
    "checker": ("checker_grid.jpg", 1.0, "a black and white checkered floor"),
    "wood": ("table/table.png", 1.0, "a wooden floor"),
    "tiles": ("tex256.png", 1.0, "a colourful tiled floor"),
    "grass": ("roboschool/models_outdoor/stadium/stadium_grass.jpg", 1.0, "a green grass floor"),
    "uv": ("uvmap.png", 0.5, "a patterned floor"),
    "fine_checker": ("checker_grid.jpg", 0.25, "a small black and white checkered floor"),
}
FLOOR_HALF_SIZE = 10.0  # metres; far beyond the farthest floor point any camera sees
BACKDROP_DISTANCE, BACKDROP_HALF_WIDTH, BACKDROP_HEIGHT = 1.8, 5.0, 3.0  # metres: a wall behind the objects, facing the camera
RAMP_LENGTH = 0.5  # metres along the slope

MOTION_PHRASES = {
    "drop": "drop onto",
    "push": "are pushed across",
    "slide": "slide across",
    "collide": "are pushed into each other on",
    "throw": "are thrown across",
    "roll": "roll down a ramp onto",
    "topple": "are stacked and topple over onto",
}


@dataclass(frozen=True)
class SceneObject:
    """One object of a spec: a kind, and for several sizes and procedural kinds its size, colour and texture."""

    kind: str
    size: str = "medium"
    colour: str | None = None  # procedural kinds only
    texture: str = "plain"  # procedural kinds only

    @classmethod
    def from_spec(cls, entry: str | dict) -> SceneObject:
        obj = cls(entry) if isinstance(entry, str) else cls(**entry)
        kind = OBJECT_KINDS.get(obj.kind)
        if kind is None or obj.size not in SIZES or obj.texture not in TEXTURES:
            raise ValueError(f"object {entry!r}: kind in {sorted(OBJECT_KINDS)}, size in {sorted(SIZES)}, texture in {sorted(TEXTURES)}")
        if (obj.colour is not None or obj.texture != "plain") != bool(kind.shape) or (kind.shape and obj.colour not in COLOURS):
            raise ValueError(f"object {entry!r}: procedural kinds {PROCEDURAL_KINDS} need a colour in {sorted(COLOURS)} (and may have a texture); the others take neither")
        return obj

    @property
    def caption(self) -> str:
        words = [] if self.size == "medium" else [self.size]
        if self.texture != "plain":
            words.append(self.texture)  # before the colour: "an orange checkered box" would name an orange
        words.append(self.colour if self.colour else OBJECT_KINDS[self.kind].adjective)
        words.append(self.kind)
        phrase = " ".join(words)
        return f"{_article(phrase)} {phrase}"


@dataclass(frozen=True)
class Light:
    """The renderer's one directional light: direction, colour temperature, diffuse intensity and ambient level."""

    azimuth_deg: float
    elevation_deg: float
    temperature_k: float
    intensity: float  # diffuse coefficient
    ambient: float  # ambient coefficient

    def renderer_arguments(self) -> dict:
        azimuth, elevation = np.deg2rad(self.azimuth_deg), np.deg2rad(self.elevation_deg)
        direction = [np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation), np.sin(elevation)]
        return {
            "lightDirection": direction,
            "lightColor": kelvin_to_rgb(self.temperature_k).tolist(),
            "lightDiffuseCoeff": self.intensity,
            "lightAmbientCoeff": self.ambient,
            "lightSpecularCoeff": 0.05,
        }

    @property
    def caption(self) -> str:
        tone = "warm" if self.temperature_k < 4000 else "cool" if self.temperature_k > 6000 else "neutral"
        level = "dim" if self.intensity + self.ambient < 0.8 else "bright" if self.intensity + self.ambient > 1.1 else ""
        return f"under {' '.join(w for w in (level, tone) if w)} light"


def kelvin_to_rgb(kelvin: float) -> np.ndarray:
    """Black-body colour of `kelvin` (Tanner Helland's fit, 1000-40000 K), each channel in [0, 1]."""
    t = kelvin / 100.0
    red = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    green = 99.4708025861 * np.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
    blue = 255.0 if t >= 66 else 0.0 if t <= 19 else 138.5177312231 * np.log(t - 10) - 305.0447927307
    return np.clip(np.array([red, green, blue]) / 255.0, 0.0, 1.0)


@dataclass
class SceneSpec:
    """One synthetic scene; everything not written here is drawn from `seed`.

    objects: kind names or {"kind", "size", "colour", "texture"} dicts; camera: a movement name, a
    camera program dict (synthetic/cameras.py), or a list of them: a synchronized rig filming one
    simulation (objects are laid out across the first camera's view); background: None (open floor)
    or a colour name for a backdrop wall; light: None (the renderer's default light) or a Light dict.
    """

    name: str
    seed: int
    objects: list[str | dict]
    motion: str
    camera: str | dict | list[str | dict]
    floor: str = "blue_checker"
    background: str | None = None
    light: dict | None = None

    @classmethod
    def from_dict(cls, data: dict) -> SceneSpec:
        spec = cls(**data)
        if not SCENE_NAME.match(spec.name):
            raise ValueError(f"scene name {spec.name!r} must be lowercase letters, digits and underscores")
        if not 2 <= len(spec.objects) <= 4:
            raise ValueError(f"scene {spec.name}: 2-4 objects, got {spec.objects}")
        objects = spec.scene_objects  # raises on an unknown kind
        if spec.motion not in MOTIONS or spec.floor not in FLOORS or (spec.background is not None and spec.background not in COLOURS):
            raise ValueError(f"scene {spec.name}: unknown motion/floor/background in {asdict(spec)}")
        if spec.motion == "topple" and not all(OBJECT_KINDS[o.kind].stacks for o in objects):
            raise ValueError(f"scene {spec.name}: only stackable kinds topple, got {[o.kind for o in objects]}")
        if isinstance(spec.camera, list) and not 1 <= len(spec.camera) <= MAX_RIG_CAMERAS:
            raise ValueError(f"scene {spec.name}: a rig has 1-{MAX_RIG_CAMERAS} cameras, got {len(spec.camera)}")
        if any(program.subject is not None and not 0 <= program.subject < len(objects) for program in spec.resolve_cameras(spec.seed_rig())):  # raises on a bad program
            raise ValueError(f"scene {spec.name}: a camera's subject is not one of its {len(objects)} objects")
        if spec.light is not None:
            Light(**spec.light)
        return spec

    @property
    def scene_objects(self) -> list[SceneObject]:
        return [SceneObject.from_spec(entry) for entry in self.objects]

    def seed_rig(self) -> CameraRig:
        """The seed's first draw, as `render_views` makes it."""
        return CameraRig.draw(np.random.default_rng(self.seed))

    @property
    def view_keys(self) -> list[str]:
        """Sample key of every camera: the scene name for one camera, `<name>_cam<k>` for each camera of a rig."""
        return [f"{self.name}_cam{k}" for k in range(len(self.camera))] if isinstance(self.camera, list) else [self.name]

    def resolve_cameras(self, rig: CameraRig) -> list[CameraProgram]:
        """Every camera's program, with what the spec leaves out taken from the seed's rig (and legacy defaults)."""
        return [self._resolve_camera(entry, rig) for entry in (self.camera if isinstance(self.camera, list) else [self.camera])]

    def _resolve_camera(self, entry: str | dict, rig: CameraRig) -> CameraProgram:
        fields = {"movement": entry} if isinstance(entry, str) else dict(entry)
        movement = fields.pop("movement")
        if movement not in MOVEMENTS:
            raise ValueError(f"scene {self.name}: camera movement {movement!r} not in {sorted(MOVEMENTS)}")
        default = MOVEMENTS[movement].default * (rig.sweep if movement in SIGNED_DEFAULTS else 1.0)
        angles = {name: np.deg2rad(fields.pop(f"{name}_deg")) if f"{name}_deg" in fields else getattr(rig, name) for name in ("azimuth", "elevation")}
        return CameraProgram(movement=movement, value=fields.pop("value", default), distance=fields.pop("distance", rig.distance), **angles, **fields)


def read_scenes(path: str | Path | None = None) -> list[tuple[str, SceneSpec | str]]:
    """(name, spec) for every entry of a scenes JSON list (default: the one shipped in assets/scenes), or
    (name, why it is not a valid spec): a run ledgers such entries instead of failing on them."""
    with open(path or DEFAULT_SCENES_PATH) as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise TypeError(f"{path}: a scenes file is a JSON list of scene specs")
    scenes = []
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        name = name if isinstance(name, str) and SCENE_NAME.match(name) else f"invalid_scene_{index:05d}"
        try:
            scenes.append((name, SceneSpec.from_dict(entry)))
        except (TypeError, ValueError, KeyError) as exc:
            scenes.append((name, f"scene {index} ({name}) is not a valid spec: {exc}"))
    return scenes


def load_default_scenes(path: str | Path | None = None) -> list[SceneSpec]:
    """The scene list shipped in assets/scenes (or any JSON list of scene dicts); raises on an invalid entry."""
    scenes = read_scenes(path)
    invalid = [spec for _, spec in scenes if isinstance(spec, str)]
    if invalid:
        raise ValueError("; ".join(invalid))
    return [spec for _, spec in scenes]


def scene_caption(spec: SceneSpec, camera: int = 0) -> str:
    """Fine-grained caption naming every object by size, colour and kind, its motion, floor, backdrop, light and camera
    (of a rig: camera number `camera`), after the special tags <synthetic> and <camera-MOVEMENT>."""
    program = spec.resolve_cameras(spec.seed_rig())[camera]
    names = [obj.caption for obj in spec.scene_objects]
    listed = ", ".join(names[:-1]) + " and " + names[-1]
    setting = FLOORS[spec.floor][2]
    if spec.background is not None:
        setting += f" in front of {_article(spec.background)} {spec.background} wall"
    if spec.light is not None:
        setting += " " + Light(**spec.light).caption
    sentence = f"{listed} {MOTION_PHRASES[spec.motion]} {setting} {program.phrase}."
    return f"{SYNTHETIC_CAPTION_TAG} {program.tag} {sentence[0].upper()}{sentence[1:]}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def scene_intrinsics(width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> np.ndarray:
    """K of a synthetic camera that does not zoom: square pixels, HFOV_DEG wide, principal point at the image centre."""
    return intrinsics_for_hfov(HFOV_DEG, width, height)


def projection_matrix(intrinsics: np.ndarray, width: int, height: int) -> list[float]:
    """OpenGL projection (column-major, as pybullet wants it) that makes TinyRenderer image exactly K.

    The off-axis terms undo TinyRenderer's native principal point (W/2, H/2 - 1), see module doc.
    """
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    proj = np.array(
        [
            [2 * fx / width, 0.0, 1 - 2 * cx / width, 0.0],
            [0.0, 2 * fy / height, 2 * (cy + 1) / height - 1, 0.0],
            [0.0, 0.0, -(FAR + NEAR) / (FAR - NEAR), -2 * FAR * NEAR / (FAR - NEAR)],
            [0.0, 0.0, -1.0, 0.0],
        ]
    )
    return proj.T.ravel().tolist()


def view_matrix(extrinsic: np.ndarray) -> list[float]:
    """pybullet view matrix (OpenGL camera: y up, z backward; column-major) for an OpenCV extrinsic."""
    return (np.diag([1.0, -1.0, -1.0, 1.0]) @ extrinsic).T.ravel().tolist()


@dataclass(frozen=True)
class CameraRig:
    """What the seed draws for the camera before anything else: start relative to its target, direction of move."""

    azimuth: float  # radians, direction from target to camera in the floor plane
    elevation: float  # radians above the floor
    distance: float  # metres from target
    sweep: float  # +1 or -1: direction of orbit / pan

    @classmethod
    def draw(cls, rng: np.random.Generator) -> CameraRig:
        azimuth, elevation = rng.uniform(0.0, 2 * np.pi), np.deg2rad(rng.uniform(42.0, 55.0))
        return cls(azimuth, elevation, rng.uniform(1.1, 1.25), rng.choice([-1.0, 1.0]))

    @property
    def across(self) -> np.ndarray:
        """Unit floor direction that runs along the image rows at frame 0."""
        return np.array([-np.sin(self.azimuth), np.cos(self.azimuth)])

    @property
    def toward(self) -> np.ndarray:
        """Unit floor direction from the target towards the camera."""
        return np.array([np.cos(self.azimuth), np.sin(self.azimuth)])


def _random_quaternion(rng: np.random.Generator) -> list[float]:
    """Uniform over rotations: a normalised 4-D Gaussian."""
    q = rng.normal(size=4)
    return (q / np.linalg.norm(q)).tolist()


def _sample_floor_spot(
    footprint: float, placed: list[tuple[np.ndarray, float]], rig: CameraRig, rng: np.random.Generator
) -> np.ndarray:
    """An (x, y) near the origin where a disc of radius `footprint` clears every placed disc by 1 cm.

    Spots spread mostly across the view: the frame is 1.75 times wider than tall.
    """
    for attempt in range(1000):
        across, toward = 0.2 + 0.002 * attempt, 0.06 + 0.0003 * attempt  # widen slowly if the objects do not fit
        xy = rng.uniform(-across, across) * rig.across + rng.uniform(-toward, toward) * rig.toward
        if all(np.linalg.norm(xy - other) > footprint + radius + 0.01 for other, radius in placed):
            return xy
    raise RuntimeError("could not place objects without overlap")


def _load_floor(floor: str, client: int) -> int:
    """A textured square floor whose texture density we choose (plane.urdf's repeats every 2 m)."""
    texture, metres_per_repeat, _ = FLOORS[floor]
    h, repeats = FLOOR_HALF_SIZE, 2 * FLOOR_HALF_SIZE / metres_per_repeat
    visual = p.createVisualShape(
        p.GEOM_MESH,
        vertices=[[-h, -h, 0.0], [h, -h, 0.0], [h, h, 0.0], [-h, h, 0.0]],
        indices=[0, 1, 2, 0, 2, 3],
        uvs=[[0.0, 0.0], [repeats, 0.0], [repeats, repeats], [0.0, repeats]],
        normals=[[0.0, 0.0, 1.0]] * 4,
        physicsClientId=client,
    )
    collision = p.createCollisionShape(p.GEOM_PLANE, physicsClientId=client)
    body = p.createMultiBody(0.0, collision, visual, physicsClientId=client)
    texture_id = p.loadTexture(f"{pybullet_data.getDataPath()}/{texture}", physicsClientId=client)
    p.changeVisualShape(body, -1, textureUniqueId=texture_id, physicsClientId=client)
    return body


def _load_backdrop(colour: str, centre: np.ndarray, rig: CameraRig, client: int) -> int:
    """A flat coloured wall BACKDROP_DISTANCE behind `centre` as seen from the camera at frame 0 (static scenery, label 0)."""
    behind = np.append(centre[:2] - BACKDROP_DISTANCE * rig.toward, 0.0)
    half = np.append(BACKDROP_HALF_WIDTH * rig.across, 0.0)
    up = np.array([0.0, 0.0, BACKDROP_HEIGHT])
    corners = [behind - half, behind + half, behind + half + up, behind - half + up]
    visual = p.createVisualShape(p.GEOM_MESH, vertices=[c.tolist() for c in corners], indices=[0, 1, 2, 0, 2, 3], normals=[np.append(rig.toward, 0.0).tolist()] * 4, rgbaColor=[*COLOURS[colour], 1.0], physicsClientId=client)
    return p.createMultiBody(0.0, -1, visual, physicsClientId=client)


def _load_object(obj: SceneObject, orientation: list[float], client: int) -> int:
    """One body at the origin with `orientation`, coloured and textured as its kind (and the spec) says."""
    kind, size, data = OBJECT_KINDS[obj.kind], SIZES[obj.size], pybullet_data.getDataPath()
    if kind.urdf is not None:
        body = p.loadURDF(kind.urdf, [0.0, 0.0, 0.0], orientation, globalScaling=kind.scale * size, physicsClientId=client)
    else:
        if kind.mesh is not None:
            shape = {"shapeType": p.GEOM_MESH, "fileName": f"{data}/{kind.mesh}", "meshScale": [kind.scale * size] * 3}
        else:
            extents = [e * size for e in kind.extents]
            if kind.shape == "box":
                shape = {"shapeType": p.GEOM_BOX, "halfExtents": extents}
            elif kind.shape == "sphere":
                shape = {"shapeType": p.GEOM_SPHERE, "radius": extents[0]}
            else:
                shape = {"shapeType": {"cylinder": p.GEOM_CYLINDER, "capsule": p.GEOM_CAPSULE}[kind.shape], "radius": extents[0], "height": 2 * extents[1]}
        collision = p.createCollisionShape(**shape, physicsClientId=client)
        visual = p.createVisualShape(**{("length" if k == "height" else k): v for k, v in shape.items()}, physicsClientId=client)  # the same size under another name
        body = p.createMultiBody(0.1, collision, visual, [0.0, 0.0, 0.0], orientation, physicsClientId=client)
    rgba = (*COLOURS[obj.colour], 1.0) if obj.colour else kind.rgba
    if rgba is not None:
        p.changeVisualShape(body, -1, rgbaColor=rgba, physicsClientId=client)
    texture = TEXTURES[obj.texture] or kind.texture
    if texture is not None:
        texture_id = p.loadTexture(f"{data}/{texture}", physicsClientId=client)
        p.changeVisualShape(body, -1, textureUniqueId=texture_id, physicsClientId=client)
    return body


def _box_extent(body: int, client: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Bounding box (low, high) and the radius of its floor footprint: mesh origins are far from the geometry
    (the teddy's by 14 cm), so objects are placed by bounding box."""
    low, high = (np.array(corner) for corner in p.getAABB(body, physicsClientId=client))
    return low, high, float(np.linalg.norm(high[:2] - low[:2]) / 2)


def _settle(client: int) -> None:
    for _ in range(int(SETTLE_SECONDS * PHYSICS_HZ)):
        p.stepSimulation(physicsClientId=client)


def _scatter(spec: SceneSpec, rig: CameraRig, rng: np.random.Generator, client: int) -> tuple[list[int], list[tuple[np.ndarray, float]]]:
    """Objects at non-overlapping floor spots: dropped ones tumbling from a few cm up, the others upright on the floor."""
    placed: list[tuple[np.ndarray, float]] = []
    bodies = []
    for obj in spec.scene_objects:
        if spec.motion in ("drop", "throw"):
            orientation, clearance = _random_quaternion(rng), rng.uniform(0.03, 0.15)
        else:
            orientation, clearance = p.getQuaternionFromEuler([0.0, 0.0, rng.uniform(0, 2 * np.pi)]), 0.005
        body = _load_object(obj, orientation, client)
        low, high, footprint = _box_extent(body, client)
        xy = _sample_floor_spot(footprint, placed, rig, rng)
        placed.append((xy, footprint))
        if spec.motion == "throw":  # start low on one side of the view, to fly across it
            xy, clearance = xy - 0.3 * rig.across, clearance + 0.1
        shift = np.append(xy - (low[:2] + high[:2]) / 2, clearance - low[2])
        p.resetBasePositionAndOrientation(body, shift, orientation, physicsClientId=client)
        bodies.append(body)
    return bodies, placed


def _quaternion_of(rotation: np.ndarray) -> list[float]:
    """(x, y, z, w) of a proper rotation matrix."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(rotation).as_quat().tolist()


def _ramp_row(spec: SceneSpec, rig: CameraRig, rng: np.random.Generator, client: int) -> tuple[list[int], list[tuple[np.ndarray, float]]]:
    """A static ramp sloping down along the image rows, and the objects side by side near its top."""
    angle = np.deg2rad(rng.uniform(14.0, 22.0))
    across, toward = np.append(rig.across, 0.0), np.append(rig.toward, 0.0)
    downhill = across * rng.choice([-1.0, 1.0])
    slope_up = -downhill * np.cos(angle) + np.array([0.0, 0.0, np.sin(angle)])
    normal = np.cross(toward, slope_up)
    normal *= np.sign(normal[2])
    bodies, footprints = [], []
    for obj in spec.scene_objects:
        axis_along_toward = p.getQuaternionFromEuler([np.pi / 2, 0.0, rig.azimuth + np.pi / 2]) if OBJECT_KINDS[obj.kind].shape in ("cylinder", "capsule") else p.getQuaternionFromEuler([0.0, 0.0, rng.uniform(0, 2 * np.pi)])
        body = _load_object(obj, axis_along_toward, client)
        bodies.append(body)
        footprints.append(_box_extent(body, client)[2])
    width = sum(2 * f for f in footprints) + 0.02 * len(footprints)
    bottom = -0.1 * downhill  # where the ramp meets the floor, just uphill of the view's centre
    thickness = 0.02
    rotation = np.stack([slope_up, np.cross(normal, slope_up), normal], axis=1)
    ramp_shape = {"halfExtents": [RAMP_LENGTH / 2, width / 2 + 0.05, thickness / 2]}
    centre = bottom + slope_up * RAMP_LENGTH / 2 - normal * thickness / 2
    ramp = p.createMultiBody(
        0.0,
        p.createCollisionShape(p.GEOM_BOX, **ramp_shape, physicsClientId=client),
        p.createVisualShape(p.GEOM_BOX, **ramp_shape, rgbaColor=[0.55, 0.45, 0.35, 1.0], physicsClientId=client),
        centre.tolist(),
        _quaternion_of(rotation),
        physicsClientId=client,
    )
    p.changeDynamics(ramp, -1, lateralFriction=0.8, physicsClientId=client)
    placed, offset = [], -width / 2
    for body, footprint in zip(bodies, footprints):
        low, high, _ = _box_extent(body, client)
        along = offset + footprint + 0.01
        offset += 2 * footprint + 0.02
        spot = bottom + slope_up * 0.75 * RAMP_LENGTH + toward * along
        surface = spot[2] + footprint * np.tan(angle)  # highest ramp point under the footprint
        position, orientation = p.getBasePositionAndOrientation(body, physicsClientId=client)
        shift = np.append(spot[:2] - (low[:2] + high[:2]) / 2, surface + 0.005 - low[2])
        p.resetBasePositionAndOrientation(body, (np.array(position) + shift).tolist(), orientation, physicsClientId=client)
        placed.append((spot[:2], footprint))
    return bodies, placed


def _stack(spec: SceneSpec, rig: CameraRig, rng: np.random.Generator, client: int) -> tuple[list[int], list[tuple[np.ndarray, float]]]:
    """The objects stacked in spec order (first at the bottom) a little off the view's centre."""
    base = rng.uniform(-0.1, 0.1) * rig.across
    bodies, placed, top = [], [], 0.0
    for obj in spec.scene_objects:
        orientation = p.getQuaternionFromEuler([0.0, 0.0, rig.azimuth + rng.uniform(-0.3, 0.3)])
        body = _load_object(obj, orientation, client)
        low, high, footprint = _box_extent(body, client)
        xy = base + rng.uniform(-0.01, 0.01, size=2)
        shift = np.append(xy - (low[:2] + high[:2]) / 2, top + 0.002 - low[2])
        p.resetBasePositionAndOrientation(body, shift, orientation, physicsClientId=client)
        top += high[2] - low[2] + 0.002
        bodies.append(body)
        placed.append((xy, footprint))
    return bodies, placed


def _build_scene(spec: SceneSpec, rig: CameraRig, rng: np.random.Generator, client: int) -> list[int]:
    """Load floor and objects into `client`, set their initial motion; returns object body ids in spec order."""
    p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=client)
    p.setGravity(0, 0, -9.81, physicsClientId=client)
    p.setTimeStep(1.0 / PHYSICS_HZ, physicsClientId=client)
    _load_floor(spec.floor, client)
    layout = {"roll": _ramp_row, "topple": _stack}.get(spec.motion, _scatter)
    bodies, placed = layout(spec, rig, rng, client)
    if spec.motion in ("push", "slide", "collide", "topple"):
        _settle(client)
    if spec.motion == "push":
        for body, (xy, _) in zip(bodies, placed):
            p.changeDynamics(body, -1, lateralFriction=0.3, rollingFriction=0.005, physicsClientId=client)
            heading = np.arctan2(-xy[1], -xy[0]) + rng.uniform(-0.7, 0.7)
            speed = rng.uniform(0.4, 0.8)
            velocity = [speed * np.cos(heading), speed * np.sin(heading), rng.uniform(0.0, 0.6)]
            spin = [0.0, 0.0, rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 8.0)]
            p.resetBaseVelocity(body, velocity, spin, physicsClientId=client)
    elif spec.motion in ("slide", "collide"):  # slide: on ice, any heading; collide: all towards their middle
        middle = np.mean([xy for xy, _ in placed], axis=0)
        for body, (xy, _) in zip(bodies, placed):
            p.changeDynamics(body, -1, lateralFriction=0.05 if spec.motion == "slide" else 0.3, physicsClientId=client)
            heading = rng.uniform(0, 2 * np.pi) if spec.motion == "slide" else np.arctan2(*(middle - xy)[::-1])
            speed = rng.uniform(0.3, 0.6)
            p.resetBaseVelocity(body, [speed * np.cos(heading), speed * np.sin(heading), 0.0], [0.0, 0.0, 0.0], physicsClientId=client)
    elif spec.motion == "throw":
        for body in bodies:
            velocity = np.append(rng.uniform(0.5, 0.9) * rig.across, rng.uniform(1.0, 1.6))
            p.resetBaseVelocity(body, velocity.tolist(), rng.uniform(-6.0, 6.0, size=3).tolist(), physicsClientId=client)
    elif spec.motion == "topple":
        push = np.append(rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.2) * rig.across, 0.0)
        for level, body in enumerate(bodies[1:], start=1):  # the higher, the harder: the stack tips over
            p.resetBaseVelocity(body, (push * level / (len(bodies) - 1)).tolist(), [0.0, 0.0, 0.0], physicsClientId=client)
    if spec.background is not None:
        _load_backdrop(spec.background, _objects_centre(bodies, client), rig, client)
    return bodies


def _objects_centre(bodies: list[int], client: int, height: float = FOCUS_HEIGHTS["centre"]) -> np.ndarray:
    """Point `height` above the middle of the objects' footprints: where cameras aim."""
    centres = [np.mean(p.getAABB(body, physicsClientId=client), axis=0) for body in bodies]
    return np.append(np.mean(centres, axis=0)[:2], height)


def _focus_point(program: CameraProgram, bodies: list[int], client: int) -> np.ndarray:
    """The program's focus point now: its focus position on the subject's bounding box, or for all objects as
    subject FOCUS_HEIGHTS above the floor over their middle."""
    if program.subject is None:
        return _objects_centre(bodies, client, FOCUS_HEIGHTS[program.focus_position])
    low, high = (np.array(corner) for corner in p.getAABB(bodies[program.subject], physicsClientId=client))
    return np.append((low[:2] + high[:2]) / 2, low[2] + FOCUS_FRACTIONS[program.focus_position] * (high[2] - low[2]))


def _pose_matrix(body: int, client: int) -> np.ndarray:
    position, orientation = p.getBasePositionAndOrientation(body, physicsClientId=client)
    pose = np.eye(4)
    pose[:3, :3] = np.reshape(p.getMatrixFromQuaternion(orientation), (3, 3))
    pose[:3, 3] = position
    return pose


def render_view(
    extrinsic: np.ndarray, intrinsics: np.ndarray, width: int, height: int, client: int, light: Light | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One TinyRenderer image of `client`: RGB uint8, metric z-depth float32, segmentation (body id, -1 = none).

    Without `light` the renderer's own defaults light the scene from LIGHT_DIRECTION."""
    lighting = light.renderer_arguments() if light is not None else {"lightDirection": LIGHT_DIRECTION}
    _, _, rgba, depth_buffer, segmentation = p.getCameraImage(
        width, height, view_matrix(extrinsic), projection_matrix(intrinsics, width, height),
        **lighting, shadow=1, renderer=p.ER_TINY_RENDERER, physicsClientId=client,
    )  # fmt: skip
    depth_buffer = np.reshape(depth_buffer, (height, width)).astype(np.float64)
    depth = FAR * NEAR / (FAR - (FAR - NEAR) * depth_buffer)  # OpenGL depth buffer -> planar z-depth
    rgb = np.reshape(rgba, (height, width, 4))[..., :3].astype(np.uint8)
    return rgb, depth.astype(np.float32), np.reshape(segmentation, (height, width))


def render_scene(spec: SceneSpec, frame_count: int = FRAME_COUNT, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> Clip:
    """The one view of a single-camera spec (a rig's views: `render_views`)."""
    if isinstance(spec.camera, list):
        raise TypeError(f"scene {spec.name} is a rig of {len(spec.camera)} cameras: render it with render_views")
    return render_views(spec, frame_count, width, height)[0]


@dataclass
class _View:
    """One camera of a rendering in progress: its program, where it aims, and the arrays it fills frame by frame."""

    program: CameraProgram
    subjects: list[int]  # bodies whose middle the focus and a following camera use
    anchor: np.ndarray  # the focus point at frame 0
    start: np.ndarray  # the subjects' middle at frame 0
    frames: np.ndarray
    depth: np.ndarray
    masks: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray


def render_views(spec: SceneSpec, frame_count: int = FRAME_COUNT, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> list[Clip]:
    """Simulate a scene once and render it from each of its cameras, with exact ground truth; deterministic in `spec`.

    Every camera films the same simulation: the physics is stepped once per frame, then each camera is
    placed (after the step, so a follow focus and a following camera see where the subject is now; a zoom
    gives every frame its own intrinsics) and renders. The views share the objects' world poses. The time it took
    (simulation, rendering and ground truth) is logged at DEBUG with `extra={"render": {"scene", "views", "seconds"}}`.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(spec.seed)
    light = Light(**spec.light) if spec.light is not None else None
    poses = np.empty((frame_count, len(spec.objects), 4, 4))
    client = p.connect(p.DIRECT)
    try:
        drawn = CameraRig.draw(rng)
        programs = spec.resolve_cameras(drawn)
        rig = replace(drawn, azimuth=programs[0].azimuth, elevation=programs[0].elevation, distance=programs[0].distance)  # objects are laid out across the first camera's view
        bodies = _build_scene(spec, rig, rng, client)
        views = []
        for program in programs:
            subjects = bodies if program.subject is None else [bodies[program.subject]]
            views.append(_View(
                program, subjects, _focus_point(program, bodies, client), _objects_centre(subjects, client),
                np.empty((frame_count, height, width, 3), np.uint8), np.empty((frame_count, height, width), np.float32),
                np.empty((frame_count, height, width), np.int32), np.empty((frame_count, 4, 4)), np.empty((frame_count, 3, 3)),
            ))  # fmt: skip
        label_of_body = np.zeros(p.getNumBodies(physicsClientId=client) + 1, np.int32)  # index -1 (no geometry) and the scenery map to 0
        label_of_body[bodies] = np.arange(1, len(bodies) + 1)
        for t, s in enumerate(np.linspace(0.0, 1.0, frame_count)):
            if t > 0:
                for _ in range(SUBSTEPS_PER_FRAME):
                    p.stepSimulation(physicsClientId=client)
            for view in views:
                aim = _focus_point(view.program, bodies, client) if view.program.focus == "follow" else view.anchor
                travel = np.append((_objects_centre(view.subjects, client) - view.start)[:2], 0.0)
                view.extrinsics[t], view.intrinsics[t] = camera_pose(view.program, s, view.anchor, aim, travel, width, height)
                view.frames[t], view.depth[t], segmentation = render_view(view.extrinsics[t], view.intrinsics[t], width, height, client, light)
                view.masks[t] = label_of_body[segmentation]
            poses[t] = [_pose_matrix(body, client) for body in bodies]
    finally:
        p.disconnect(client)
    clips = [_view_clip(spec, key, camera, view, poses) for camera, (key, view) in enumerate(zip(spec.view_keys, views))]
    seconds = time.perf_counter() - started
    log.debug("rendered %s: %d views in %.2f s", spec.name, len(clips), seconds, extra={"render": {"scene": spec.name, "views": len(clips), "seconds": seconds}})
    return clips


_waiting_views: dict[tuple, dict[int, Clip]] = {}  # the rendered views of one scene not yet asked for


def scene_view(path: str | Path | None, name: str, camera: int) -> Clip:
    """View `camera` of scene `name` of a scenes file (None: the shipped one), for the clips stage, one row per view.

    A rig's cameras film one simulation, so the first of its rows renders every view; the others wait
    here (one scene's views at most) for their rows, which follow in the same partition."""
    path = Path(path or DEFAULT_SCENES_PATH)
    stamp = (str(path.resolve()), path.stat().st_mtime_ns, name)
    waiting = _waiting_views.get(stamp, {})
    if camera not in waiting:
        spec = next(spec for scene, spec in read_scenes(path) if scene == name)
        _waiting_views.clear()
        waiting = _waiting_views[stamp] = dict(enumerate(render_views(spec)))
    clip = waiting.pop(camera)
    if not waiting:
        _waiting_views.clear()
    return clip


def _view_clip(spec: SceneSpec, key: str, camera: int, view: _View, poses: np.ndarray) -> Clip:
    track_uvd, track_visible = ground_truth_tracks(view.depth, view.masks, view.intrinsics, view.extrinsics, poses)
    truth = SceneTruth(view.depth, view.masks, [obj.kind for obj in spec.scene_objects], view.extrinsics, track_uvd, track_visible, view.intrinsics, poses)
    program = view.program
    source = {
        "kind": "synthetic",
        "scene": spec.name,
        "seed": spec.seed,
        "camera": program.movement,
        "camera_program": program.paper_terms(-view.extrinsics[0, :3, :3].T @ view.extrinsics[0, :3, 3]),
        "camera_labels": program.labels,
        "motion": spec.motion,
        "floor": spec.floor,
        "background": spec.background,
        "light": spec.light,
        "renderer": "pybullet TinyRenderer",
        "pybullet_version": importlib.metadata.version("pybullet"),
        "fps": VIDEO_FPS,
    }
    return Clip(key, view.frames, scene_caption(spec, camera), view.intrinsics[0], source, truth)


def ground_truth_tracks(
    depth: np.ndarray, masks: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray, poses: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (u, v, z) at every frame of the surface point under every frame-0 pixel, and its visibility.

    intrinsics: (T, 3, 3), the K of every frame (a zoom changes it).
    Object points ride with their body's pose (poses: (T, K, 4, 4) body->world), floor points stay put.
    A point is visible where it projects inside the image onto a pixel of the same instance whose
    rendered depth agrees with its own to within max(1 cm, 1%).
    """
    frame_count, height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    points_cam0 = unproject(np.stack([u, v, depth[0]], axis=-1), intrinsics[0]).reshape(-1, 3)
    labels = masks[0].reshape(-1)
    identity = np.broadcast_to(np.eye(4), (frame_count, 1, 4, 4))
    # motion of instance k from frame 0 to frame t in world; instance 0 (floor) does not move
    motion = np.concatenate([identity, poses @ np.linalg.inv(poses[:1])], axis=1)
    camera0_to_world = np.linalg.inv(extrinsics[0])
    track_uvd = np.empty((frame_count, height, width, 3), np.float32)
    track_visible = np.empty((frame_count, height, width), bool)
    track_uvd[0] = np.stack([u, v, depth[0]], axis=-1)
    track_visible[0] = True
    for t in range(1, frame_count):
        transforms = extrinsics[t] @ motion[t] @ camera0_to_world  # (K+1, 4, 4): camera 0 -> camera t per instance
        per_point = transforms[labels]
        points_cam = np.einsum("nij,nj->ni", per_point[:, :3, :3], points_cam0) + per_point[:, :3, 3]
        uvd = project(points_cam, intrinsics[t]).astype(np.float32)  # decide visibility on the values we store
        column, row = np.rint(uvd[:, 0]), np.rint(uvd[:, 1])
        inside = (uvd[:, 2] > 0) & (column >= 0) & (column < width) & (row >= 0) & (row < height)
        row_i, col_i = np.where(inside, row, 0).astype(np.intp), np.where(inside, column, 0).astype(np.intp)
        rendered = depth[t][row_i, col_i]
        tolerance = np.maximum(VISIBILITY_ABS_TOL, VISIBILITY_REL_TOL * uvd[:, 2])
        visible = inside & (np.abs(rendered - uvd[:, 2]) <= tolerance) & (masks[t][row_i, col_i] == labels)
        track_uvd[t] = uvd.reshape(height, width, 3)
        track_visible[t] = visible.reshape(height, width)
    return track_uvd, track_visible
