"""Quality gate of the point_maps stage: objects whose tracks are judged lost leave the point map.

Trackers lose objects (a tumbling, weakly textured duck; a ball rolling fast over a checkerboard), and
a lost object's points hang where it used to be, carrying wrong positions a trainer would believe.
No ground truth is needed: the signals below come from what every backend gives (tracks, per-frame
visibility, the frames and the depth maps), per object, over the object's frame-0 query tracks:

- `visible_at_end`: share of its tracks visible at the last frame. A lost object's tracks land on
  other surfaces and fail the depth test, or the object turned its tracked side away.
- `floating`: the largest share, over frames 1..T-1, of its tracks lying in front of every surface the
  depth map shows within `FLOATING_RADIUS` of their pixel (by more than the depth tolerance): points in free
  space, which an opaque world does not have, and what a track left behind by its object looks like. The
  radius forgives a track a pixel off at its object's silhouette (a teddy's ear or arm), which would
  otherwise float over the floor behind. A track held on
  the frame's border has left the frame (trackers report it there): out of view, neither floating nor
  on a surface (thrown objects that fly out of the picture were removed as floating).
- `hidden_unoccluded`: share of its tracks that the tracker calls hidden at the last frame although
  the depth map shows the point itself at its pixel (no nearer surface hides it, it does not float):
  the tracker has given up on a body it should see (the rigid tracker's pose no longer explains the
  images). 0 when no track is in that position.
- `hidden_frames`: share of frames 1..T-1 in which the tracker calls most of the object's tracks hidden
  although the depth map shows each point itself at its pixel (`hidden_unoccluded` of that frame above
  one half): how long the tracker could not confirm the body it should see. The rigid tracker hides a
  body whose pose the frame's flow barely supports (`RigidObjectTracker.min_support`); a tracker that
  gives up on an object in more than one frame of a 16-frame clip (`max_hidden_frames` 0.1) has guessed its way through it.
- `recoloured`: share of its tracks visible at the last frame with no pixel within `RECOLOUR_RADIUS` of
  their end whose colour is within `RECOLOUR_LEVELS` of their frame-0 colour: a point on the same surface
  keeps its albedo (shading moves it less), one on the wrong side of a checkered ball or on the floor does
  not. The radius forgives what an accurate track does on a pattern: a sub-pixel error, or rounding, lands it
  on the next square's colour at an edge (rolling checkered balls tracked to 1 px read 0.21-0.36 pixel by
  pixel). NaN when none is visible.
- `colour_change`: median change of colour (sum of |RGB| differences, 0-765) between each visible
  track's frame-0 pixel and its pixel at the last frame.

An object is removed when a signal crosses its (finite) threshold; with the rigid tracker those are
`floating`, `hidden_frames` and `recoloured`, while `visible_at_end`, `hidden_unoccluded` and
`colour_change` are reported in the sample JSON but not gated on (the sweep found no threshold on them
that helped). A tracker whose result depends on random draws (`RigidObjectTracker`: RANSAC) gives a
second opinion on an object the signals judge lost:

- `redraw_disagreement` and `redraw_end_disagreement`: the tracks_3d stage tracks the objects that need a
  second opinion (`needs_redraw`) again with other draws (`redrawn()`, every other body held where the first
  draw put it: `RigidObjectTracker.draw`), and records per such
  object the median pixel distance between the two draws' tracks of its query points at every frame
  (`draw_disagreement`): these signals are its largest over frames 1..T-1 and its value at the last frame.
  Two draws that follow a body to within `redraw_agreement` pixels in every frame found its pose in the
  images, not by luck; a lost body is usually a fragile fit, which another draw loses elsewhere. So:
  - an object flagged only by the signals that measure what the tracker could confirm (`REDRAW_ANSWERS`: a
    body called hidden where it is seen, a track a pixel off on a pattern) is kept when the draws agree.
    `floating` is not answered: tracks in free space are wrong however reproducible (a duck both draws
    left behind floated at 0.55);
  - an object not flagged but with some tracks floating (`redraw_floating`, a quarter of the gate's
    threshold) or recoloured (`redraw_recoloured`, two thirds of it: a rolling ball tracked off its colour) is
    removed when the two draws end further apart than `max_redraw_end_disagreement` (8 px, the failure
    test's own distance: one of them is then off by 4 px or more).
  NaN (not redrawn) leaves the other signals' verdict.
`GATE_THRESHOLDS` documents the sweep; benchmarks/point_map_quality.py measures the gate's precision and
recall against the ground truth (failed = median error of its tracks at its last frame in view above 8 px).
The signals are computed on the smoothed tracks the point map is built from, and the thresholds were
swept on the "rigid-tracks" smoother's output: another smoother needs another sweep.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from pointvid_pipeline.stages.point_maps import DEPTH_TOLERANCE, surface_depth

REDRAW_ANSWERS = frozenset({"hidden_unoccluded", "hidden_frames", "recoloured", "colour_change"})  # flags a second draw that agrees overrules
RECOLOUR_LEVELS = 200  # sum of |RGB| differences (0-765) above which a track's pixel has changed colour
RECOLOUR_RADIUS = 1  # pixels: a track is recoloured when no pixel of the (2 r + 1)^2 square around its end keeps its colour
FLOATING_RADIUS = 1  # pixels: a track floats when it is in front of the nearest surface of the (2 r + 1)^2 square around it


@dataclass(frozen=True)
class GateThresholds:
    max_floating: float
    max_hidden_unoccluded: float
    max_hidden_frames: float
    max_recoloured: float
    max_colour_change: float
    redraw_agreement: float = 3.0  # px: a flagged object whose second draw stays this close in every frame is kept
    redraw_floating: float = 0.05  # an object not flagged is redrawn when this share of its tracks floats in some frame
    redraw_recoloured: float = 0.1  # ... or this share of its tracks visible at the end is recoloured
    max_redraw_end_disagreement: float = 8.0  # px between the two draws at the last frame


# `python benchmarks/gate_sweep.py DIR/default DIR/seeds` on the 14 default scenes and the same specs drawn with 4 other
# seeds (56 scenes; DIR from benchmarks/point_map_quality.py --keep DIR), rigid tracker with depth refinement and
# min_support 0.2: 189 objects, 35 failed (3 / 32). The chosen setting is the sweep's first: it leaves no failed
# object in the default scenes and ranks first by F1 on the other seeds. Precision / recall on the default scenes and
# on the other seeds:
#     before this tracker (floating 0.2, hidden_unoccluded 0.7, recoloured 0.4)   P 0.67 / 0.82   R 0.57 / 0.84
#     the same thresholds on this tracker's output                                P 0.50 / 0.74   R 1.00 / 0.81
#     floating 0.25, hidden_frames 0.2, recoloured 0.2   chosen                    P 0.75 / 0.77   R 1.00 / 0.94
#     (hidden_frames 0.15: default P 0.60; 0.3: default P 0.50; recoloured 0.25-0.3: other seeds P 0.76, R 0.91)
# hidden_frames supersedes hidden_unoccluded (the last frame only), which no longer raises F1, nor does the median
# colour change (25-80): both are reported, not gated on (inf). No setting reaches precision 0.8 with recall 0.9 on
# the other seeds: the 9 good objects removed are bodies the tracker could not confirm for a fifth of the clip or more,
# or whose tracks float or change colour on the way (they are within 8 px at the last frame, all the failure test
# looks at); the 2 failures kept keep their tracks visible, on their own surface and colour.
# Those figures are one draw of the tracker on one machine. On an AVX-512 machine (OpenCV, numpy and BLAS take other
# SIMD paths, and the tracker's weak fits flip on the last bits) the same code and thresholds gave, over tracker seeds
# 0-3 (`point_map_quality.py --tracker-seeds 4`, plus the specs drawn with seeds +5000..+8000 as a held-out set):
#     default scenes      failed 7/6/6/6     lost shipped 2/3/1/2   P 0.83/0.67/0.83/0.57   R 0.71/0.67/0.83/0.67
#     other seeds (56)    failed 29/33/33/35 lost shipped 4/2/6/2   P 0.66/0.74/0.79/0.80   R 0.86/0.94/0.82/0.94
#     held-out seeds (56) failed 32/35/32/38 lost shipped 3/4/4/3   P 0.76/0.82/0.72/0.85   R 0.91/0.89/0.88/0.92
# i.e. on the 112 other-seed scenes P 0.77 +- 0.06, R 0.90 +- 0.04 (mean +- sd of 8 draws). Re-sweeping on one draw
# picks noise: on seed 0 there, the only settings leaving the default scenes clean remove 66 of the other seeds' 151
# objects (P 0.42); the best setting on a tracker variant's draw (refining fits below inlier share 0.8, not kept;
# floating 0.2, hidden_frames 0.15, recoloured off: P 0.80 R 0.93 there) scored P 0.77 R 0.84 on the held-out scenes,
# against the shipped setting's 0.76 / 0.91. Kept as it is.
# With RANSAC's stopping rule in the tracker (RigidObjectTracker.max_hypotheses 512, tracker version 5), same machine,
# seeds and thresholds: fewer objects fail and fewer lost ones ship; precision drops because about as many good objects
# are removed while fewer objects fail:
#     default scenes      failed 6/6/5/5     lost shipped 1/1/0/1   P 0.83/0.71/0.71/0.50   R 0.83/0.83/1.00/0.80
#     other seeds (56)    failed 28/27/33/30 lost shipped 4/2/1/3   P 0.71/0.68/0.74/0.71   R 0.89/0.93/0.97/0.90
#     held-out seeds (56) failed 35/32/34/31 lost shipped 4/3/4/5   P 0.76/0.81/0.81/0.76   R 0.89/0.91/0.88/0.84
# i.e. P 0.75 +- 0.05, R 0.90 +- 0.04 on the 112 other-seed scenes.
# Judging an object hidden or gone by the last frame at its last frame in view (track_errors.object_last_seen_errors;
# such objects 25-42 px off while seen counted as good ones the gate removed), tracker 5, seeds 0-3: default scenes
# unchanged; other seeds failed 30/28/35/32, P 0.77/0.70/0.79/0.76, R 0.90/0.93/0.97/0.91 (point_map_quality.py
# --tracker-seeds 4).
# `recoloured` forgiving 1 px (RECOLOUR_RADIUS): rolling checkered balls tracked to 1 px read 0.21-0.36 pixel by pixel,
# and half of the good objects removed on the other seeds were removed for that alone. On tracker 5's output, P / R on
# the 112 other-seed and held-out scenes x tracker seeds 0-3 went from 0.784 / 0.889 to 0.828 / 0.918 at
# (0.22, 0.15, 0.2). Tracker 6 (ICP turning a body about its own centre) fails fewer objects (default 6/6/5/5 ->
# 4/3/2/3, other seeds 30/28/35/32 -> 27/29/31/28, held-out 34/34/34/33), so as many good objects removed weigh more.
# Swept again on its output, tracker seeds 0-3 pooled, default and other seeds (held-out untouched until the choice):
#     (floating, hidden_frames, recoloured)   other seeds + held-out (8 draws)   failed objects left in default, per draw
#     (0.25, 0.2, 0.2)                        P 0.819 R 0.884                      1/1/1/1
#     (0.22, 0.15, 0.2)                       P 0.795 R 0.916                      0/1/1/0
#     (0.22, 0.15, 0.15)                      P 0.781 R 0.928                      0/0/1/0
#     (0.2, 0.15, 0.15)  chosen               P 0.761 R 0.932                      0/0/0/0
# chosen, per set: other seeds P 0.74 R 0.98; held-out P 0.78 R 0.89 (0.74/0.82/0.76/0.82 per draw). No setting leaves
# the default scenes clean with precision 0.8. Of the good objects removed (within 8 px at their last frame in view),
# about half were more than 8 px off for part of the clip (a tumbling duck 27 px at frame 6, 8 px at the end);
# the failures kept (held-out: 5/2/6/2 per draw) show no signal: a block flipped onto another face in one frame,
# its tracks on its own surface and colour, never hidden.
# Half of the good objects removed for floating were accurate (0-5 px) bodies with thin parts (a teddy's ears and
# arms): a track a pixel off their silhouette hangs over the floor behind. `floating` now looks for the nearest surface
# within FLOATING_RADIUS = 1 px. Swept again with it (and with radius 2, and RECOLOUR_RADIUS 2) on tracker 6's output,
# tracker seeds 0-3, from the same tracks (benchmarks/point_map_quality.py --keep, then the signals recomputed), the
# 112 other-seed and held-out scenes x 4 draws pooled, the 14 default scenes required clean in every draw:
#     (floating, hidden_frames, recoloured)      P / R pooled     failed kept / good removed over the 8 draws
#     (0.2, 0.15, 0.15) pixel floating, before   0.761 / 0.932    17 / 73
#     (0.2, 0.1, 0.15) floating radius 1, chosen 0.768 / 0.956    11 / 72
#     (0.15, 0.1, 0.15) floating radius 2        0.764 / 0.956    11 / 74
#     (0.2, 0.15, 0.15) floating radius 1        0.813 / 0.924    19 / 53   but a flipped block 17 px off ships in one default draw
# RECOLOUR_RADIUS 2 ranked no higher (a default draw's failure then shipped). On the 40 generated scenes x 2 cameras of
# `pointvid synth --count 40 --seed 7 --cameras 2` (throws, topples, rolls: 93 of 223 objects fail) the chosen
# setting gives P 0.76 R 0.74 against the one before's 0.77 / 0.73: this gate does not catch what those motions do.
# The other-seed and held-out scenes above were both used to choose these thresholds, so their figures flatter the gate.
# On 56 fresh scenes (the default specs drawn with seeds +9000..+12000, used for nothing else; benchmarks/
# point_map_quality.py --first-extra-seed 9 --tracker-seeds 3), tracker seeds 0-2:
#     P 0.698 / 0.727 / 0.690   R 0.882 / 0.889 / 0.906   lost objects shipped 4 / 4 / 3
# A `hidden_frames`-like signal averaged instead of counted (mean over frames of the share of on-surface tracks called
# hidden) reached P 0.80-0.82 at R 0.92-0.94 on the sweep's scenes but P 0.72-0.76 at R 0.88-0.91 on the fresh ones
# (e.g. floating 0.2, hidden_frames 0.15, recoloured 0.15, mean hidden share 0.2: P 0.727 R 0.912, 9 lost shipped over
# the 3 draws against this setting's 11, and 14 against 11 on the sweep's 8 draws): not kept.
# The second draw (redraw_agreement, REDRAW_ANSWERS, redraw_floating, max_redraw_end_disagreement): about half the good
# objects removed (34 of 75 over 7 draws) were flagged by `hidden_frames` or `recoloured` while two tracker draws follow
# them to within 3 px, most within 2; lost ones are fragile fits that another draw leaves elsewhere. Chosen offline on
# draw pairs of the fresh, other-seed and held-out scenes (tracker seeds 0-2): keep a flagged object when the draws
# agree within 2 / 3 / 4 px, floating
# overruled or not -> 3 px, floating never overruled (a duck floating at 0.55 that both draws left behind was the one
# failure that rule kept on the scenes of --first-extra-seed 13, never used before). Of the failures no flag caught, those
# the draws leave more than 8 px apart at the end all had some tracks floating (0.07-0.19), and no good object with
# more than 0.03 floating ended 8 px apart (offline: 6 failures caught, 0 good objects removed over 7 draws); redrawing
# those above 0.05 floating is cheap (0-2 objects a draw of 56 scenes). Then curated with it (benchmarks/
# point_map_quality.py --keep, default scenes tracker seeds 0-3, every other set seeds 0-1, the fresh one 0-2),
# P / R / lost objects shipped / good objects removed per draw, before -> after:
#     default (14)             lost shipped 0/0/0/0 -> 0/0/0/0; P 0.67/0.43/0.29/0.43 -> 0.67/0.60/0.40/0.50 (R 1)
#     other seeds +1000..4000  P 0.711/0.744 -> 0.771/0.806   R 1.000/1.000 unchanged        lost 0/0 -> 0/0      good removed 11/10 -> 8/7
#     held-out +5000..8000     P 0.775/0.821 -> 0.865/0.889   R 0.912/0.941 -> 0.941/0.941   lost 3/2 -> 2/2      good removed 9/7 -> 5/4
#     fresh +9000..12000       P 0.698/0.727/0.690 -> 0.811/0.846/0.789   R 0.882/0.889/0.906 -> 0.882/0.917/0.938
#                              lost 4/4/3 -> 4/3/2   good removed 13/12/13 -> 7/6/8
#     +13000..16000 (once)     P 0.839/0.781 -> 0.867/0.862   R 0.963/0.926 unchanged        lost 1/2 unchanged   good removed 5/7 -> 4/4
# pooled over the 9 draws of the 224 non-default scenes: P 0.750 -> 0.833, R 0.932 -> 0.943, lost objects shipped 19 -> 16,
# good objects removed 87 -> 53. Those sets all took part in the choice; on 56 scenes drawn afterwards and used for
# nothing else (+17000..+20000, point_map_quality.py --first-extra-seed 17 --tracker-seeds 2):
#     P 0.707/0.667 -> 0.784/0.794   R 0.935/0.839 -> 0.935/0.871   lost 2/5 -> 2/4   good removed 12/13 -> 8/7
# i.e. the gain holds, and the gate stays short of P 0.8 / R 0.9 there. The second draw runs on 4-6 of the 14 default
# clips and 19-29 of 56 other clips: benchmarks/pipeline.py on the default scenes, the code before and after run one
# after the other, twice: tracks_3d 699 -> 841 and 938 -> 1193 ms a clip (x1.20, x1.27), clip -> shard 937 -> 1092 and 1338 -> 1592 ms (x1.17, x1.19; the
# host's load moved the code before from 937 to 1338 ms between the pairs). PipelineSettings.gate_redraw
# (POINTVID_GATE_REDRAW=0) turns it off. Since then the second draw re-fits only the doubted objects, the other bodies held
# at the first draw's poses (RigidObjectTracker.draw): ~0.23 s instead of ~0.59 s a redrawn clip; over 15 draws of the
# default and four 56-scene sets the same 19 lost objects shipped and 70 good ones removed, pooled (per set: held-out 4 -> 3,
# fresh 9 -> 10, the others unchanged); clip -> shard 934-1055 -> 820-857 ms a clip with the mp4 preset (paired runs).
# redraw_recoloured: the failures no flag caught included balls rolled out of step with their pattern, 0.13-0.14 of their
# end tracks recoloured. Redrawing objects not flagged above 0.1 was chosen offline on whole-clip draw pairs (draw d+1 is
# draw d's redrawn(); fresh 0-1, other seeds 0, held-out 0, +13000 0: 280 scene-draws): lost objects shipped 10 -> 8, good objects
# removed unchanged. No change on the default scenes (draws 0-3), +17000 (0-1) and +21000..+24000 (0-1, drawn this
# session, never used to choose: P 0.778 / 0.833, R 1.0 / 1.0, no lost object shipped). Clips tracked twice: default
# 4/5/5/6 -> 5/5/6/6 of 14 (draws 0-3), 0-4 more of 56 in the other sets. Curated: fresh draw 0 P 0.811 -> 0.816, R
# 0.882 -> 0.912, lost shipped 4 -> 3; other seeds, held-out draw 0 unchanged. Those are whole-clip second draws: with the
# partial one above (curated on this code), fresh draws 0-2 ship 4/4/2 lost objects and held-out 0-1 2/1, i.e. the
# draw-0 catch is not repeated there.
GATE_THRESHOLDS = GateThresholds(max_floating=0.2, max_hidden_unoccluded=math.inf, max_hidden_frames=0.1, max_recoloured=0.15, max_colour_change=math.inf)


def object_signals(frames: np.ndarray, depth: np.ndarray, tracks_uvd: np.ndarray, visibility: np.ndarray, query_labels: np.ndarray, query_uv: np.ndarray) -> dict[int, dict[str, float]]:
    """Object id -> its signals, from (T, N, 3) tracks, (T, N) visibility and each query's frame-0 label and pixel."""
    frame_count, height, width = depth.shape
    surface = surface_depth(tracks_uvd, depth)  # (T, N)
    window = np.ones((2 * FLOATING_RADIUS + 1,) * 2, np.uint8)
    nearest_surface = surface_depth(tracks_uvd, np.stack([cv2.erode(frame_depth, window) for frame_depth in np.asarray(depth, np.float32)]))
    # Trackers report a point that left the frame held at its border: it is in front of whatever the border pixel shows,
    # but it is out of view, not floating. A tracked point lies exactly on the border line only when held there.
    u, v = tracks_uvd[..., 0], tracks_uvd[..., 1]
    in_frame = (u > 0) & (u < width - 1) & (v > 0) & (v < height - 1)
    in_front = in_frame & (tracks_uvd[..., 2] < nearest_surface * (1 - DEPTH_TOLERANCE))
    on_surface = in_frame & (np.abs(tracks_uvd[..., 2] - surface) <= DEPTH_TOLERANCE * surface)  # (T, N)
    hidden_on_surface = ~visibility & on_surface
    start_colour = frames[0, query_uv[:, 1], query_uv[:, 0]].astype(np.int32)
    end_col, end_row = np.rint(tracks_uvd[-1, :, 0]).astype(np.intp), np.rint(tracks_uvd[-1, :, 1]).astype(np.intp)
    changes = {  # (d_row, d_col) -> per track, colour change from frame 0 to that neighbour of its end pixel
        (d_row, d_col): np.abs(frames[-1, np.clip(end_row + d_row, 0, height - 1), np.clip(end_col + d_col, 0, width - 1)].astype(np.int32) - start_colour).sum(axis=-1)
        for d_row in range(-RECOLOUR_RADIUS, RECOLOUR_RADIUS + 1)
        for d_col in range(-RECOLOUR_RADIUS, RECOLOUR_RADIUS + 1)
    }  # fmt: skip
    colour_change = changes[0, 0]
    recoloured = np.min(list(changes.values()), axis=0) > RECOLOUR_LEVELS
    signals = {}
    for object_id in np.unique(query_labels[query_labels > 0]):
        mine = query_labels == object_id
        seen_at_end = mine & visibility[-1]
        hidden_share = hidden_on_surface[:, mine].sum(axis=1) / np.maximum(on_surface[:, mine].sum(axis=1), 1)  # (T,)
        signals[int(object_id)] = {
            "visible_at_end": float(visibility[-1, mine].mean()),
            "floating": float(in_front[1:, mine].mean(axis=1).max()) if frame_count > 1 else 0.0,
            "hidden_unoccluded": float(hidden_share[-1]),
            "hidden_frames": float((hidden_share[1:] > 0.5).mean()) if frame_count > 1 else 0.0,
            "recoloured": float(recoloured[seen_at_end].mean()) if seen_at_end.any() else float("nan"),
            "colour_change": float(np.median(colour_change[seen_at_end])) if seen_at_end.any() else float("nan"),
        }
    return signals


def lost_objects(signals: dict[int, dict[str, float]], thresholds: GateThresholds = GATE_THRESHOLDS) -> dict[int, list[str]]:
    """Object id -> the signals that judged it lost (objects kept are not listed). An object judged lost by
    `REDRAW_ANSWERS` signals alone is kept when its `redraw_disagreement` is at most `thresholds.redraw_agreement`."""
    lost = {}
    for object_id, values in signals.items():
        reasons = flagged_by(values, thresholds)
        if reasons and not (set(reasons) <= REDRAW_ANSWERS and values.get("redraw_disagreement", math.nan) <= thresholds.redraw_agreement):  # NaN: no second draw
            lost[object_id] = reasons
    return lost


def flagged_by(values: dict[str, float], thresholds: GateThresholds = GATE_THRESHOLDS) -> list[str]:
    """The signals of one object that cross their thresholds; a signal it lacks (not redrawn) never does."""
    limits = {name.removeprefix("max_"): limit for name, limit in asdict(thresholds).items() if name.startswith("max_")}  # signal -> its threshold
    return [signal for signal, limit in limits.items() if values.get(signal, math.nan) > limit]  # NaN (nothing visible) and inf never cross


def needs_redraw(signals: dict[int, dict[str, float]], thresholds: GateThresholds = GATE_THRESHOLDS) -> list[int]:
    """The objects a second draw can judge: flagged by `REDRAW_ANSWERS` signals alone (it may keep them), or not
    flagged but with more than `redraw_floating` of their tracks floating in some frame or `redraw_recoloured`
    recoloured at the end (it may remove them)."""
    return [
        object_id for object_id, values in signals.items()
        if set(reasons := flagged_by(values, thresholds)) <= REDRAW_ANSWERS
        and (reasons or values["floating"] > thresholds.redraw_floating or values["recoloured"] > thresholds.redraw_recoloured)  # NaN recoloured: none visible
    ]  # fmt: skip


def draw_disagreement(tracks: np.ndarray, redrawn: np.ndarray, query_labels: np.ndarray, objects: Iterable[int]) -> dict[int, list[float]]:
    """Object id -> per frame 1..T-1, the median (u, v) distance between two draws' (T, N, 2+) tracks of its query
    points: how far apart two runs of a tracker with other random draws left the body."""
    distance = np.linalg.norm(np.asarray(tracks)[1:, :, :2] - np.asarray(redrawn)[1:, :, :2], axis=-1)  # (T-1, N)
    return {int(k): np.median(distance[:, query_labels == k], axis=1).tolist() for k in objects}


def gate_signals(
    frames: np.ndarray, depth: np.ndarray, tracks_uvd: np.ndarray, visibility: np.ndarray, query_labels: np.ndarray, query_uv: np.ndarray,
    redraw_disagreement_px: dict[str, list[float]],
) -> dict[int, dict[str, float]]:  # fmt: skip
    """What the gate judges each object on: its `object_signals` and the second draw's (`redraw_signals`) from the
    tracks_3d stage's `redraw_disagreement_px` (object id as a string -> per-frame distance; objects not redrawn absent)."""
    signals = object_signals(frames, depth, tracks_uvd, visibility, query_labels, query_uv)
    for object_id, values in signals.items():
        values.update(redraw_signals(redraw_disagreement_px.get(str(object_id))))
    return signals


def redraw_signals(per_frame: list[float] | None) -> dict[str, float]:
    """The gate's two signals from one object's `draw_disagreement` (None: not redrawn, NaN)."""
    if not per_frame:
        return {"redraw_disagreement": math.nan, "redraw_end_disagreement": math.nan}
    return {"redraw_disagreement": max(per_frame), "redraw_end_disagreement": per_frame[-1]}


def thresholds_json(thresholds: GateThresholds = GATE_THRESHOLDS) -> dict[str, float | None]:
    """The thresholds for the sample JSON, which has no infinity: null = that signal is not gated on."""
    return {name: None if value == math.inf else value for name, value in asdict(thresholds).items()}
