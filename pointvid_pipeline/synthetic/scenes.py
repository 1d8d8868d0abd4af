"""Synthetic scenes rendered on the CPU with pybullet: rigid objects dropped or pushed on a textured floor.

These clips are the pipeline's default input because the renderer knows everything exactly: metric
depth, instance masks, camera poses and the true trajectory of every frame-0 pixel. Downstream
stages can therefore run (and be checked) without any real video, model weights or GPU.

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
import re
from dataclasses import asdict, dataclass
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

SCENES_DIR = Path(__file__).resolve().parents[2] / "assets" / "scenes"
DEFAULT_SCENES_PATH = SCENES_DIR / "default_scenes.json"

PHYSICS_HZ = 240
VIDEO_FPS = 20
SUBSTEPS_PER_FRAME = PHYSICS_HZ // VIDEO_FPS
SETTLE_SECONDS = 0.5  # pushed objects come to rest on the floor before the push
HFOV_DEG = 50.0
NEAR, FAR = 0.05, 10.0  # metres; every camera looks down steeply enough that the floor fills the frame
VISIBILITY_ABS_TOL, VISIBILITY_REL_TOL = 0.01, 0.01  # metres, fraction of depth
LIGHT_DIRECTION = (0.5, -0.4, 1.0)
SCENE_NAME = re.compile(r"^[a-z0-9_]+$")
MOTIONS = ("drop", "push")


@dataclass(frozen=True)
class ObjectKind:
    """How one caption noun is built in pybullet."""

    urdf: str  # relative to pybullet_data
    scale: float
    adjective: str  # colour/material word the caption puts before the kind
    rgba: tuple[float, float, float, float] | None = None
    texture: str | None = None  # image inside pybullet_data pasted over the mesh's own material


OBJECT_KINDS: dict[str, ObjectKind] = {
    "duck": ObjectKind("duck_vhacd.urdf", 2.2, "yellow"),
    "cube": ObjectKind("cube_small.urdf", 2.8, "white", texture="cube.png"),
    "ball": ObjectKind("sphere_small.urdf", 2.8, "red", rgba=(1.0, 0.3, 0.25, 1.0)),
    "soccer ball": ObjectKind("soccerball.urdf", 0.18, "black and white"),
    "teddy bear": ObjectKind("teddy_vhacd.urdf", 2.2, "brown", rgba=(0.65, 0.42, 0.22, 1.0)),
    "block": ObjectKind("jenga/jenga.urdf", 1.4, "wooden"),
}

FLOORS: dict[str, tuple[str, float, str]] = {  # name -> (texture inside pybullet_data, metres per repeat, caption)
    "blue_checker": ("checker_blue.png", 0.3, "a blue checkered floor"),
    "checker": ("checker_grid.jpg", 1.0, "a black and white checkered floor"),
    "wood": ("table/table.png", 1.0, "a wooden floor"),
    "tiles": ("tex256.png", 1.0, "a colourful tiled floor"),
    "grass": ("roboschool/models_outdoor/stadium/stadium_grass.jpg", 1.0, "a green grass floor"),
}
FLOOR_HALF_SIZE = 10.0  # metres; far beyond the farthest floor point any camera sees

CAMERA_PHRASES = {
    "static": "seen from a static camera",
    "orbit": "while the camera slowly orbits the scene",
    "dolly": "while the camera dollies in towards them",
    "pan": "while the camera pans across the scene",
}
MOTION_PHRASES = {"drop": "drop onto", "push": "are pushed across"}


@dataclass
class SceneSpec:
    """One synthetic scene; everything not written here is drawn from `seed`."""

    name: str
    seed: int
    objects: list[str]
    motion: str
    camera: str
    floor: str = "blue_checker"

    @classmethod
    def from_dict(cls, data: dict) -> SceneSpec:
        spec = cls(**data)
        if not SCENE_NAME.match(spec.name):
            raise ValueError(f"scene name {spec.name!r} must be lowercase letters, digits and underscores")
        if not 2 <= len(spec.objects) <= 4 or any(kind not in OBJECT_KINDS for kind in spec.objects):
            raise ValueError(f"scene {spec.name}: 2-4 objects from {sorted(OBJECT_KINDS)}, got {spec.objects}")
        if spec.motion not in MOTIONS or spec.camera not in CAMERA_PHRASES or spec.floor not in FLOORS:
            raise ValueError(f"scene {spec.name}: unknown motion/camera/floor in {asdict(spec)}")
        return spec


def load_default_scenes(path: str | Path | None = None) -> list[SceneSpec]:
    """The scene list shipped in assets/scenes (or any JSON list of scene dicts)."""
    with open(path or DEFAULT_SCENES_PATH) as f:
        return [SceneSpec.from_dict(entry) for entry in json.load(f)]


def scene_caption(spec: SceneSpec) -> str:
    """Fine-grained caption naming every object by colour and kind, its motion, floor and camera."""
    names = [f"{_article(OBJECT_KINDS[kind].adjective)} {OBJECT_KINDS[kind].adjective} {kind}" for kind in spec.objects]
    listed = ", ".join(names[:-1]) + " and " + names[-1]
    sentence = f"{listed} {MOTION_PHRASES[spec.motion]} {FLOORS[spec.floor][2]} {CAMERA_PHRASES[spec.camera]}."
    return f"{SYNTHETIC_CAPTION_TAG} {sentence[0].upper()}{sentence[1:]}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def scene_intrinsics(width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> np.ndarray:
    """K of every synthetic camera: square pixels, HFOV_DEG wide, principal point at the image centre."""
    f = (width / 2.0) / np.tan(np.deg2rad(HFOV_DEG) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


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


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """4x4 world->camera (OpenCV: x right, y down, z forward) for a camera with world z up."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    extrinsic = np.eye(4)
    extrinsic[:3, :3] = np.stack([right, down, forward])
    extrinsic[:3, 3] = -extrinsic[:3, :3] @ eye
    return extrinsic


def view_matrix(extrinsic: np.ndarray) -> list[float]:
    """pybullet view matrix (OpenGL camera: y up, z backward; column-major) for an OpenCV extrinsic."""
    return (np.diag([1.0, -1.0, -1.0, 1.0]) @ extrinsic).T.ravel().tolist()


@dataclass(frozen=True)
class CameraRig:
    """Where the camera starts relative to its target, and which way it moves."""

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


def camera_path(camera: str, rig: CameraRig, target: np.ndarray, frame_count: int) -> np.ndarray:
    """(T, 4, 4) world->camera extrinsics of a camera aimed at `target`, moving as `camera` says."""
    extrinsics = []
    for s in np.linspace(0.0, 1.0, frame_count):
        azimuth, distance, aim = rig.azimuth, rig.distance, target
        if camera == "orbit":
            azimuth += rig.sweep * np.deg2rad(30.0) * s
        elif camera == "dolly":
            distance *= 1.25 - 0.25 * s  # ends where a static camera would stand
        direction = np.array([np.cos(azimuth), np.sin(azimuth), 0.0]) * np.cos(rig.elevation)
        eye = target + distance * (direction + [0.0, 0.0, np.sin(rig.elevation)])
        if camera == "pan":
            turn = rig.sweep * np.deg2rad(12.0) * (s - 0.5)  # about the vertical through the eye
            cos, sin = np.cos(turn), np.sin(turn)
            aim = eye + np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]]) @ (target - eye)
        extrinsics.append(look_at(eye, aim))
    return np.stack(extrinsics)


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


def _build_scene(spec: SceneSpec, rig: CameraRig, rng: np.random.Generator, client: int) -> list[int]:
    """Load floor and objects into `client`, set their initial motion; returns object body ids in spec order."""
    data = pybullet_data.getDataPath()
    p.setAdditionalSearchPath(data, physicsClientId=client)
    p.setGravity(0, 0, -9.81, physicsClientId=client)
    p.setTimeStep(1.0 / PHYSICS_HZ, physicsClientId=client)
    _load_floor(spec.floor, client)
    placed: list[tuple[np.ndarray, float]] = []
    bodies = []
    for kind_name in spec.objects:
        kind = OBJECT_KINDS[kind_name]
        if spec.motion == "drop":
            orientation, clearance = _random_quaternion(rng), rng.uniform(0.03, 0.15)
        else:
            orientation, clearance = p.getQuaternionFromEuler([0.0, 0.0, rng.uniform(0, 2 * np.pi)]), 0.005
        body = p.loadURDF(kind.urdf, [0.0, 0.0, 0.0], orientation, globalScaling=kind.scale, physicsClientId=client)
        if kind.rgba is not None:
            p.changeVisualShape(body, -1, rgbaColor=kind.rgba, physicsClientId=client)
        if kind.texture is not None:
            texture_id = p.loadTexture(f"{data}/{kind.texture}", physicsClientId=client)
            p.changeVisualShape(body, -1, textureUniqueId=texture_id, physicsClientId=client)
        # mesh origins are far from the geometry (the teddy's by 14 cm): place by bounding box instead
        low, high = (np.array(corner) for corner in p.getAABB(body, physicsClientId=client))
        footprint = np.linalg.norm(high[:2] - low[:2]) / 2
        xy = _sample_floor_spot(footprint, placed, rig, rng)
        placed.append((xy, footprint))
        shift = np.append(xy - (low[:2] + high[:2]) / 2, clearance - low[2])
        p.resetBasePositionAndOrientation(body, shift, orientation, physicsClientId=client)
        bodies.append(body)
    if spec.motion == "push":
        for _ in range(int(SETTLE_SECONDS * PHYSICS_HZ)):
            p.stepSimulation(physicsClientId=client)
        for body, (xy, _) in zip(bodies, placed):
            p.changeDynamics(body, -1, lateralFriction=0.3, rollingFriction=0.005, physicsClientId=client)
            heading = np.arctan2(-xy[1], -xy[0]) + rng.uniform(-0.7, 0.7)
            speed = rng.uniform(0.4, 0.8)
            velocity = [speed * np.cos(heading), speed * np.sin(heading), rng.uniform(0.0, 0.6)]
            spin = [0.0, 0.0, rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 8.0)]
            p.resetBaseVelocity(body, velocity, spin, physicsClientId=client)
    return bodies


def _objects_centre(bodies: list[int], client: int) -> np.ndarray:
    """Point 12 cm above the middle of the objects' footprints: where cameras aim."""
    centres = [np.mean(p.getAABB(body, physicsClientId=client), axis=0) for body in bodies]
    return np.append(np.mean(centres, axis=0)[:2], 0.12)


def _pose_matrix(body: int, client: int) -> np.ndarray:
    position, orientation = p.getBasePositionAndOrientation(body, physicsClientId=client)
    pose = np.eye(4)
    pose[:3, :3] = np.reshape(p.getMatrixFromQuaternion(orientation), (3, 3))
    pose[:3, 3] = position
    return pose


def render_view(
    extrinsic: np.ndarray, intrinsics: np.ndarray, width: int, height: int, client: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One TinyRenderer image of `client`: RGB uint8, metric z-depth float32, segmentation (body id, -1 = none)."""
    _, _, rgba, depth_buffer, segmentation = p.getCameraImage(
        width, height, view_matrix(extrinsic), projection_matrix(intrinsics, width, height),
        lightDirection=LIGHT_DIRECTION, shadow=1, renderer=p.ER_TINY_RENDERER, physicsClientId=client,
    )  # fmt: skip
    depth_buffer = np.reshape(depth_buffer, (height, width)).astype(np.float64)
    depth = FAR * NEAR / (FAR - (FAR - NEAR) * depth_buffer)  # OpenGL depth buffer -> planar z-depth
    rgb = np.reshape(rgba, (height, width, 4))[..., :3].astype(np.uint8)
    return rgb, depth.astype(np.float32), np.reshape(segmentation, (height, width))


def render_scene(
    spec: SceneSpec, frame_count: int = FRAME_COUNT, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT
) -> Clip:
    """Simulate and render one scene with exact ground truth; deterministic in `spec`."""
    rng = np.random.default_rng(spec.seed)
    intrinsics = scene_intrinsics(width, height)
    frames = np.empty((frame_count, height, width, 3), np.uint8)
    depth = np.empty((frame_count, height, width), np.float32)
    masks = np.empty((frame_count, height, width), np.int32)
    poses = np.empty((frame_count, len(spec.objects), 4, 4))
    client = p.connect(p.DIRECT)
    try:
        rig = CameraRig.draw(rng)
        bodies = _build_scene(spec, rig, rng, client)
        extrinsics = camera_path(spec.camera, rig, _objects_centre(bodies, client), frame_count)
        label_of_body = np.zeros(max(bodies) + 2, np.int32)  # index -1 (no geometry) and the floor map to 0
        label_of_body[bodies] = np.arange(1, len(bodies) + 1)
        for t in range(frame_count):
            if t > 0:
                for _ in range(SUBSTEPS_PER_FRAME):
                    p.stepSimulation(physicsClientId=client)
            frames[t], depth[t], segmentation = render_view(extrinsics[t], intrinsics, width, height, client)
            masks[t] = label_of_body[segmentation]
            poses[t] = [_pose_matrix(body, client) for body in bodies]
    finally:
        p.disconnect(client)
    track_uvd, track_visible = ground_truth_tracks(depth, masks, intrinsics, extrinsics, poses)
    truth = SceneTruth(depth, masks, list(spec.objects), extrinsics, track_uvd, track_visible)
    source = {
        "kind": "synthetic",
        "scene": spec.name,
        "seed": spec.seed,
        "camera": spec.camera,
        "motion": spec.motion,
        "renderer": "pybullet TinyRenderer",
        "pybullet_version": importlib.metadata.version("pybullet"),
        "fps": VIDEO_FPS,
    }
    return Clip(spec.name, frames, scene_caption(spec), intrinsics, source, truth)


def ground_truth_tracks(
    depth: np.ndarray, masks: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray, poses: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (u, v, z) at every frame of the surface point under every frame-0 pixel, and its visibility.

    Object points ride with their body's pose (poses: (T, K, 4, 4) body->world), floor points stay put.
    A point is visible where it projects inside the image onto a pixel of the same instance whose
    rendered depth agrees with its own to within max(1 cm, 1%).
    """
    frame_count, height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    points_cam0 = unproject(np.stack([u, v, depth[0]], axis=-1), intrinsics).reshape(-1, 3)
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
        uvd = project(points_cam, intrinsics).astype(np.float32)  # decide visibility on the values we store
        column, row = np.rint(uvd[:, 0]), np.rint(uvd[:, 1])
        inside = (uvd[:, 2] > 0) & (column >= 0) & (column < width) & (row >= 0) & (row < height)
        row_i, col_i = np.where(inside, row, 0).astype(np.intp), np.where(inside, column, 0).astype(np.intp)
        rendered = depth[t][row_i, col_i]
        tolerance = np.maximum(VISIBILITY_ABS_TOL, VISIBILITY_REL_TOL * uvd[:, 2])
        visible = inside & (np.abs(rendered - uvd[:, 2]) <= tolerance) & (masks[t][row_i, col_i] == labels)
        track_uvd[t] = uvd.reshape(height, width, 3)
        track_visible[t] = visible.reshape(height, width)
    return track_uvd, track_visible
