"""Camera programs of synthetic scenes: the movement taxonomy of the synthetic-video paper (Table 10).

A program is one movement (static, truck, dolly, pedestal, tilt, pan, spin, following, zoom, orbit)
with a signed movement value, an initial position around the focus point (azimuth, elevation,
distance), a horizontal field of view (the focal length), a focus type (fixed: a point fixed in
the world at frame 0; follow: the subject's point at every frame) and a focus position (lower,
centre, upper part of the subject: one object, or all of them). `camera_pose` turns it into one frame's world->camera
extrinsic AND intrinsics, so zoom (and later per-camera intrinsics of a rig) is per frame.

Geometry of one frame at time s in [0, 1] (the units and signs of the value are in MOVEMENTS):
the camera stands at `anchor + distance * (cos(el) cos(az), cos(el) sin(az), sin(el))` and looks
at the focus point; orbit adds value * s to the azimuth, dolly scales the distance from
(1 + value) to 1, truck / pedestal / following translate the camera (and with a fixed focus its aim), pan / tilt turn
the aim about the camera centre by value * (s - 1/2), spin rolls about the optical axis by
value * s, zoom scales the focal length by value ** s. World z is up; azimuth grows
counterclockwise seen from above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HFOV_DEG = 50.0
FOCUS_TYPES = ("fixed", "follow")
FOCUS_HEIGHTS = {"lower": 0.05, "centre": 0.12, "upper": 0.2}  # all objects as subject: metres above the floor over their middle
FOCUS_FRACTIONS = {"lower": 0.25, "centre": 0.5, "upper": 0.75}  # one object as subject: fraction of its bounding box's height


@dataclass(frozen=True)
class Movement:
    """One movement of the taxonomy: its value's unit, its default size, and its words."""

    unit: str
    default: float  # the value when a spec names only the movement (sign from the seed)
    labels: tuple[str, str]  # CameraBench-style primitive for a positive / negative value
    phrases: tuple[str, str]  # caption phrase for a positive / negative value


MOVEMENTS: dict[str, Movement] = {
    "static": Movement("none", 0.0, ("static", "static"), ("seen from a static camera", "seen from a static camera")),
    "truck": Movement("metres to the camera's right", 0.3, ("truck-right", "truck-left"), ("while the camera moves sideways to the right", "while the camera moves sideways to the left")),
    "dolly": Movement("fraction of the final distance travelled towards the focus", 0.25, ("dolly-in", "dolly-out"), ("while the camera dollies in towards them", "while the camera dollies out away from them")),
    "pedestal": Movement("metres up", 0.25, ("pedestal-up", "pedestal-down"), ("while the camera rises", "while the camera lowers")),
    "tilt": Movement("degrees up over the clip", 12.0, ("tilt-up", "tilt-down"), ("while the camera tilts up", "while the camera tilts down")),
    "pan": Movement("degrees counterclockwise seen from above (to the left)", 12.0, ("pan-left", "pan-right"), ("while the camera pans across the scene", "while the camera pans across the scene")),
    "spin": Movement("degrees the camera rolls clockwise (seen from behind it)", 20.0, ("roll-clockwise", "roll-counterclockwise"), ("while the camera rolls clockwise", "while the camera rolls counterclockwise")),
    "following": Movement("fraction of the subject's floor travel the camera copies", 1.0, ("tracking", "tracking"), ("while the camera follows them", "while the camera follows them")),
    "zoom": Movement("final / initial focal length", 1.5, ("zoom-in", "zoom-out"), ("while the camera zooms in", "while the camera zooms out")),
    "orbit": Movement("degrees of azimuth, counterclockwise seen from above", 30.0, ("arc-counterclockwise", "arc-clockwise"), ("while the camera slowly orbits the scene", "while the camera slowly orbits the scene")),
}
SIGNED_DEFAULTS = ("truck", "pan", "spin", "orbit")  # movements whose default direction is drawn (the others move in / up)
MAX_RIG_CAMERAS = len(MOVEMENTS)  # a rig's views are rendered together and held in memory (about 45 MB each)


@dataclass(frozen=True)
class CameraProgram:
    """A fully resolved camera program; angles in radians (specs write degrees)."""

    movement: str
    value: float
    azimuth: float  # direction from the focus point to the camera in the floor plane
    elevation: float  # above the floor, seen from the focus point
    distance: float  # metres from the focus point (for dolly: at the end of the clip)
    hfov_deg: float = HFOV_DEG
    focus: str = "fixed"
    focus_position: str = "centre"
    subject: int | None = None  # index into the scene's objects the focus uses; None = all objects

    def __post_init__(self):
        if self.movement not in MOVEMENTS or self.focus not in FOCUS_TYPES or self.focus_position not in FOCUS_HEIGHTS:
            raise ValueError(f"camera: movement in {sorted(MOVEMENTS)}, focus in {FOCUS_TYPES}, focus_position in {sorted(FOCUS_HEIGHTS)}; got {self}")
        if self.movement == "zoom" and self.value <= 0:
            raise ValueError(f"camera: a zoom's value is a focal-length ratio > 0, got {self.value}")

    @property
    def is_positive(self) -> bool:
        return self.value >= 0 if self.movement != "zoom" else self.value >= 1

    @property
    def labels(self) -> list[str]:
        """CameraBench-style primitives; a follow focus on a non-following camera adds the turning it causes."""
        movement = MOVEMENTS[self.movement]
        labels = [movement.labels[0 if self.is_positive else 1]]
        if self.focus == "follow" and self.movement != "following":
            labels.append("subject-follow")
        return labels

    @property
    def phrase(self) -> str:
        return MOVEMENTS[self.movement].phrases[0 if self.is_positive else 1]

    @property
    def tag(self) -> str:
        """Special caption tag naming the movement class, e.g. <camera-orbit>."""
        return f"<camera-{self.movement}>"

    def paper_terms(self, initial_position: np.ndarray) -> dict:
        """The program as Table 10 of the synthetic-video paper names it."""
        return {
            "movement_type": self.movement,
            "movement_value": self.value,
            "movement_unit": MOVEMENTS[self.movement].unit,
            "initial_position": [round(float(x), 6) for x in initial_position],
            "azimuth_deg": round(float(np.rad2deg(self.azimuth)), 6),
            "elevation_deg": round(float(np.rad2deg(self.elevation)), 6),
            "distance": self.distance,
            "hfov_deg": self.hfov_deg,
            "focus_type": self.focus,
            "focus_position": self.focus_position,
            "subject": self.subject,
        }


def intrinsics_for_hfov(hfov_deg: float, width: int, height: int) -> np.ndarray:
    """K with square pixels, `hfov_deg` wide, principal point at the image centre."""
    f = (width / 2.0) / np.tan(np.deg2rad(hfov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


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


def _rotate(vector: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of `vector` about the unit `axis`."""
    cos, sin = np.cos(angle), np.sin(angle)
    return vector * cos + np.cross(axis, vector) * sin + axis * (axis @ vector) * (1 - cos)


def camera_pose(program: CameraProgram, s: float, anchor: np.ndarray, aim: np.ndarray, travel: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(4x4 world->camera, 3x3 K) at time s in [0, 1].

    anchor: the focus point at frame 0 (the camera's position is set around it); aim: the focus point
    of this frame (= anchor for a fixed focus); travel: how far the subject has moved on the floor
    since frame 0 (used by `following` only).
    """
    movement, value = program.movement, program.value
    azimuth, distance = program.azimuth, program.distance
    if movement == "orbit":
        azimuth += np.deg2rad(value) * s
    elif movement == "dolly":
        distance *= (1 + value) - value * s  # ends at `distance`
    direction = np.array([np.cos(azimuth), np.sin(azimuth), 0.0]) * np.cos(program.elevation)
    eye = anchor + distance * (direction + [0.0, 0.0, np.sin(program.elevation)])
    if movement in ("truck", "pedestal", "following"):
        across = np.array([-np.sin(program.azimuth), np.cos(program.azimuth), 0.0])  # image right at frame 0
        shift = {"truck": value * s * across, "pedestal": np.array([0.0, 0.0, value * s]), "following": value * travel}[movement]
        eye = eye + shift
        if program.focus == "fixed":  # a pure translation; a follow focus keeps looking at the subject
            aim = aim + shift
    if movement == "pan":
        turn = np.deg2rad(value) * (s - 0.5)  # about the vertical through the eye
        cos, sin = np.cos(turn), np.sin(turn)
        aim = eye + np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]]) @ (aim - eye)
    elif movement == "tilt":
        horizontal = np.cross(aim - eye, [0.0, 0.0, 1.0])
        aim = eye + _rotate(aim - eye, horizontal / np.linalg.norm(horizontal), np.deg2rad(value) * (s - 0.5))
    extrinsic = look_at(eye, aim)
    if movement == "spin":
        roll = -np.deg2rad(value) * s  # the camera turns clockwise, so the picture turns counterclockwise
        rolled = np.eye(4)
        rolled[:2, :2] = [[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]]
        extrinsic = rolled @ extrinsic
    intrinsics = intrinsics_for_hfov(program.hfov_deg, width, height)
    if movement == "zoom":
        intrinsics[0, 0] *= value**s
        intrinsics[1, 1] *= value**s
    return extrinsic, intrinsics
