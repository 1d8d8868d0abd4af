"""The quality gate's signals on constructed tracks with known failures, and the stage's use of them."""

import dataclasses

import numpy as np
import pytest

from pointvid_pipeline.backends.registry import StageBackends, lazy_backends
from pointvid_pipeline.evaluation.track_errors import object_last_seen_errors, object_worst_frame_errors
from pointvid_pipeline.pipeline import STAGES, partition_rows, run_stage
from pointvid_pipeline.settings import PipelineSettings
from pointvid_pipeline.stages.object_tracking import RigidObjectTracker
from pointvid_pipeline.stages.quality_gate import FLOATING_RADIUS, GATE_THRESHOLDS, GateThresholds, draw_disagreement, gate_signals, lost_objects, needs_redraw, object_signals, redraw_signals
from pointvid_pipeline.storage.stage_store import StageStore

FRAMES, HEIGHT, WIDTH = 6, 30, 40


def scene():
    """Floor at 4 m; object 1 (a red square at 2 m) stays put and is tracked right; object 2 (green, 2 m)
    moves right by 2 px a frame but its tracks stay behind, hanging in front of the floor."""
    frames = np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    depth = np.full((FRAMES, HEIGHT, WIDTH), 4.0, np.float32)
    frames[..., 2] = 200  # blue floor
    for t in range(FRAMES):
        frames[t, 5:15, 5:15] = (220, 0, 0)
        depth[t, 5:15, 5:15] = 2.0
        frames[t, 15:25, 20 + 2 * t : 30 + 2 * t] = (0, 220, 0)
        depth[t, 15:25, 20 + 2 * t : 30 + 2 * t] = 2.0
    queries = np.array([[u, v] for v in range(5, 25, 2) for u in range(5, 30, 2) if (5 <= u < 15 and 5 <= v < 15) or (20 <= u < 30 and 15 <= v < 25)])
    labels = np.where((queries[:, 0] < 15), 1, 2)
    tracks = np.zeros((FRAMES, len(queries), 3))
    tracks[:, :, :2] = queries  # nobody moves: right for object 1, wrong for object 2
    tracks[:, :, 2] = 2.0
    visible = np.ones((FRAMES, len(queries)), bool)
    return frames, depth, tracks, visible, labels, queries


def test_tracks_left_behind_float_and_change_colour_and_are_judged_lost():
    frames, depth, tracks, visible, labels, queries = scene()

    signals = object_signals(frames, depth, tracks, visible, labels, queries)

    assert signals[1] == {"visible_at_end": 1.0, "floating": 0.0, "hidden_unoccluded": 0.0, "hidden_frames": 0.0, "recoloured": 0.0, "colour_change": 0.0}
    assert signals[2]["floating"] == 0.8  # by the last frame the object moved 10 px: its tracks hang over the floor, but for
    # the column 1 px from its new edge (FLOATING_RADIUS forgives a track that close to a nearer surface)
    assert signals[2]["colour_change"] > 200  # green at frame 0, blue floor at the end
    assert signals[2]["recoloured"] == 0.8  # every visible track left green for blue, but those 1 px from the object's new edge (u = 29)
    assert lost_objects(signals) == {2: ["floating", "recoloured"]}  # colour change is reported, not gated on (GATE_THRESHOLDS)
    assert lost_objects(signals, GateThresholds(max_floating=1.0, max_hidden_unoccluded=1.0, max_hidden_frames=1.0, max_recoloured=1.0, max_colour_change=100.0)) == {2: ["colour_change"]}


def test_a_track_a_pixel_off_the_silhouette_does_not_float_and_one_further_off_does():
    """Object 1 (columns 5-14) tracked right but for its left column (u 5), pushed left onto the floor behind it:
    1 px off (a rounding at a thin part's edge) is forgiven by FLOATING_RADIUS, 3 px off hangs in free space."""
    frames, depth, tracks, visible, labels, queries = scene()
    left_column = (labels == 1) & (queries[:, 0] == 5)

    tracks[-1, left_column, 0] = 5 - FLOATING_RADIUS
    assert object_signals(frames, depth, tracks, visible, labels, queries)[1]["floating"] == 0.0

    tracks[-1, left_column, 0] = 5 - FLOATING_RADIUS - 2
    assert object_signals(frames, depth, tracks, visible, labels, queries)[1]["floating"] == left_column.sum() / (labels == 1).sum()


def test_tracks_that_leave_the_frame_are_out_of_view_not_floating():
    """A thrown object leaves the frame; its tracks are reported held at the border (and not visible), where the
    floor shows behind them. Out of view is not lost: it must not read as floating."""
    frames, depth, tracks, visible, labels, queries = scene()
    gone = labels == 2
    tracks[3:, gone, 0] = WIDTH - 1  # from frame 3 every track of object 2 is past the right border, held on it
    visible[3:, gone] = False

    signals = object_signals(frames, depth, tracks, visible, labels, queries)

    assert signals[2]["floating"] < 0.5  # frames 1-2 only: the tracks left behind then, before the object left
    assert signals[2]["hidden_unoccluded"] == 0.0 and signals[2]["visible_at_end"] == 0.0
    for t in (1, 2):
        tracks[t, gone, 0] = queries[gone, 0] + 2 * t  # tracked right until it left
    assert object_signals(frames, depth, tracks, visible, labels, queries)[2]["floating"] == 0.0
    assert 2 not in lost_objects(object_signals(frames, depth, tracks, visible, labels, queries))


def test_tracks_on_the_wrong_side_of_a_patterned_object_are_recoloured_and_lost_but_a_pixel_off_or_shading_is_not():
    frames, depth, tracks, visible, labels, queries = scene()
    frames[:, 5:15, 5:10] = (230, 230, 230)  # object 1: white left half, black right half
    frames[:, 5:15, 10:15] = (20, 20, 20)
    mirrored = tracks.copy()
    mirrored[-1, labels == 1, 0] = 19 - tracks[-1, labels == 1, 0]  # every track ends on the other half: a wrong rotation

    signals = object_signals(frames, depth, mirrored, visible, labels, queries)

    assert signals[1]["floating"] == 0.0 and signals[1]["hidden_unoccluded"] == 0.0  # on the object's own surface, in view
    assert signals[1]["recoloured"] == 0.8  # all but the tracks ending 1 px from the edge between the halves (u 9 -> 10)
    assert lost_objects(signals)[1] == ["recoloured"]

    nudged = tracks.copy()
    nudged[-1, labels == 1, 0] += np.where(tracks[-1, labels == 1, 0] == 9, 1, 0)  # tracked to a pixel, across the edge
    assert object_signals(frames, depth, nudged, visible, labels, queries)[1]["recoloured"] == 0.0

    frames[-1, 5:15, 5:15] = (frames[-1, 5:15, 5:15] * 0.75).astype(np.uint8)  # tracked right, the object turned into shade
    signals = object_signals(frames, depth, tracks, visible, labels, queries)
    assert signals[1]["recoloured"] == 0.0 and 1 not in lost_objects(signals)


def test_an_object_called_hidden_where_nothing_hides_it_is_lost_and_one_hidden_for_real_is_kept():
    frames, depth, tracks, visible, labels, queries = scene()
    tracks[:, labels == 2, 0] += 2 * np.arange(FRAMES)[:, None]  # now object 2 is tracked right ...
    visible[2:, labels == 2] = False  # ... but from frame 2 on the tracker says it is hidden

    signals = object_signals(frames, depth, tracks, visible, labels, queries)

    assert np.isnan(signals[2]["colour_change"]) and np.isnan(signals[2]["recoloured"]) and signals[2]["visible_at_end"] == 0.0
    assert signals[2]["floating"] < GATE_THRESHOLDS.max_floating
    assert signals[2]["hidden_unoccluded"] == 1.0  # the depth map shows each point itself, at its own depth
    assert signals[2]["hidden_frames"] == 0.8  # frames 2-5 of 1-5
    assert lost_objects(signals) == {2: ["hidden_frames"]}

    visible[2:5, labels == 2] = True  # given up on at the last frame only: reported, not gated on ...
    signals = object_signals(frames, depth, tracks, visible, labels, queries)
    assert signals[2]["hidden_unoccluded"] == 1.0 and signals[2]["hidden_frames"] == 0.2
    one_frame_of_a_clip = 1 / 15  # ... though here one frame of five is 0.2 of the clip, above the gate's 0.15
    assert GATE_THRESHOLDS.max_hidden_frames > one_frame_of_a_clip and lost_objects(signals, dataclasses.replace(GATE_THRESHOLDS, max_hidden_frames=0.2)) == {}
    visible[2:5, labels == 2] = False

    depth[2:, 15:25, 20:40] = 1.0  # a nearer surface in front of object 2 from frame 2 on: hidden for real
    signals = object_signals(frames, depth, tracks, visible, labels, queries)
    assert signals[2]["hidden_unoccluded"] == 0.0 and signals[2]["hidden_frames"] == 0.0 and lost_objects(signals) == {}


def test_a_second_draw_that_reproduces_the_tracks_overrules_the_tracker_confidence_flags_but_not_floating():
    frames, depth, tracks, visible, labels, queries = scene()
    redrawn = tracks.copy()
    redrawn[3, labels == 2, 0] += np.where(queries[labels == 2, 1] < 20, 2.0, 9.0)  # frame 3: 15 of object 2's 25 tracks 2 px off, 10 tracks 9 px
    redrawn[5, labels == 2, 1] += 3.0  # frame 5: all 3 px off
    redrawn[4, labels == 1, 0] += 0.5
    disagreement = draw_disagreement(tracks, redrawn, labels, [1, 2])
    assert disagreement == {1: [0, 0, 0, 0.5, 0], 2: [0, 0, 2.0, 0, 3.0]}  # frames 1-5, the median over the object's tracks
    assert redraw_signals(disagreement[2]) == {"redraw_disagreement": 3.0, "redraw_end_disagreement": 3.0}
    assert redraw_signals(disagreement[1]) == {"redraw_disagreement": 0.5, "redraw_end_disagreement": 0.0}
    assert GATE_THRESHOLDS.redraw_agreement == 3.0

    signals = object_signals(frames, depth, tracks, visible, labels, queries)  # object 2 left behind: floating
    assert needs_redraw(signals) == []
    signals[2]["redraw_disagreement"] = 0.0
    assert lost_objects(signals) == {2: ["floating", "recoloured"]}  # tracks in free space: however reproducible, removed

    tracks[:, labels == 2, 0] += 2 * np.arange(FRAMES)[:, None]  # object 2 tracked right, but called hidden from frame 2 on
    visible[2:, labels == 2] = False
    signals = object_signals(frames, depth, tracks, visible, labels, queries)
    assert lost_objects(signals) == {2: ["hidden_frames"]} and needs_redraw(signals) == [2]
    signals[2].update(redraw_signals(disagreement[2]))
    gated = gate_signals(frames, depth, tracks, visible, labels, queries, {"2": disagreement[2]})  # what the stage gates on
    assert repr(gated[2]) == repr(signals[2]) and np.isnan(gated[1]["redraw_disagreement"])  # (repr: NaN != NaN); object 1 not redrawn
    assert lost_objects(signals) == {}  # both draws leave it in the same place: its pose came from the images, not luck
    signals[2]["redraw_disagreement"] = 3.5
    assert lost_objects(signals) == {2: ["hidden_frames"]}  # the draws disagree: a fragile fit, removed
    signals[2]["redraw_disagreement"] = float("nan")
    assert lost_objects(signals) == {2: ["hidden_frames"]}  # no second draw: removed as before

    assert needs_redraw(signals) == [2] and signals[1]["floating"] == 0.0
    signals[1]["floating"] = 0.1  # object 1 not flagged, but a tenth of its tracks float in some frame: asked about too
    assert needs_redraw(signals) == [1, 2] and GATE_THRESHOLDS.redraw_floating < 0.1 < GATE_THRESHOLDS.max_floating
    signals[1]["floating"], signals[1]["recoloured"] = 0.0, 0.12  # or an eighth of its tracks end off their colour
    assert needs_redraw(signals) == [1, 2] and GATE_THRESHOLDS.redraw_recoloured < 0.12 < GATE_THRESHOLDS.max_recoloured
    signals[1]["recoloured"] = float("nan")  # none of its tracks visible at the end: no colour to judge
    assert needs_redraw(signals) == [2]
    signals[1].update(redraw_signals([0.5, 2.0, 6.0, 9.0]))  # the two draws end 9 px apart: one of them is 4.5 px off or more
    assert lost_objects(signals)[1] == ["redraw_end_disagreement"]
    signals[1].update(redraw_signals([0.5, 2.0, 9.0, 6.0]))  # apart on the way, within 8 px at the end: the failure test's frame
    assert 1 not in lost_objects(signals)
    assert RigidObjectTracker(seed=4).redrawn() == RigidObjectTracker(seed=5)


class TrackerThatLosesEverything:
    """The real tracker's call, then every track frozen at its query pixel: objects that fall or are
    pushed leave their tracks hanging in the air, as a failed tracker does."""

    def __init__(self, tracker):
        self.tracker, self.name, self.version = tracker, tracker.name, tracker.version

    def setup(self):
        self.tracker.setup()

    def track(self, frames, depth, queries, **inputs):
        tracks, visibility = self.tracker.track(frames, depth, queries, **inputs)
        return np.broadcast_to(tracks[:1], tracks.shape).copy(), np.ones_like(visibility)


class TrackerThatDoubtsEverything:
    """The real tracker's tracks, every foreground track called hidden after frame 0 (where the depth map shows it:
    the `hidden_frames` flag); a second draw (`redrawn().draw(..., first=)`) leaves them `redraw_shift` px right of the first's after frame 0."""

    def __init__(self, tracker, redraw_shift: float):
        self.tracker, self.name, self.version = tracker, tracker.name, tracker.version
        self.redraw_shift = redraw_shift

    def setup(self):
        self.tracker.setup()

    def redrawn(self):
        return self

    def track(self, frames, depth, queries, labels, intrinsics):
        draw = self.draw(frames, depth, queries, labels, intrinsics)
        return draw.tracks, draw.visibility

    def draw(self, frames, depth, queries, labels, intrinsics, first=None, objects=()):
        if first is not None:
            tracks = first.tracks.copy()
            tracks[1:, :, 0] += self.redraw_shift
            return first._replace(tracks=tracks)
        draw = self.tracker.draw(frames, depth, queries, labels=labels, intrinsics=intrinsics)
        foreground = labels[queries[:, 1].astype(int), queries[:, 0].astype(int)] > 0
        draw.visibility[8:, foreground] = False  # hidden for the second half of the clip (the stage's no_visible_track needs the first)
        return draw


@pytest.mark.parametrize("redraw_shift", [7.0, 2.0])
def test_stage_asks_a_redrawable_tracker_for_a_second_draw_of_the_objects_it_doubts(tmp_path, redraw_shift):
    settings = PipelineSettings(data_dir=tmp_path, shard_size=3)
    backends = lazy_backends("cpu")
    tracker = lambda: TrackerThatDoubtsEverything(backends.point_tracker(), redraw_shift)
    partition = next(iter(partition_rows(settings)))
    for stage in STAGES[:-1]:
        run_stage(stage, partition, settings, StageBackends(backends.object_extractor, backends.segmenter, backends.depth_estimator, tracker))

    store = StageStore(settings.stages_dir)
    redraws = {key: meta["redraw_disagreement_px"] for key, meta in store.read_index("tracks_3d", partition).accepted.items()}
    assert any(redraws.values()) and {value for redraw in redraws.values() for frames in redraw.values() for value in frames} == {redraw_shift}
    gated = store.read_index("point_maps", partition)
    assert len(gated.accepted) + len(gated.rejected) == 3
    for key, meta in gated.accepted.items():
        assert meta["gate"]["thresholds"]["redraw_agreement"] == GATE_THRESHOLDS.redraw_agreement
        removed = {str(entry["object_id"]) for entry in meta["gate"]["removed"]}
        for object_id in redraws[key]:  # the objects the second draw was asked about
            assert meta["gate"]["signals"][object_id]["redraw_disagreement"] == redraw_shift
            assert (object_id in removed) == (redraw_shift > GATE_THRESHOLDS.redraw_agreement)  # kept when the draws agree
    if redraw_shift > GATE_THRESHOLDS.redraw_agreement:
        assert any(row["reason"] == "track_failure" for row in gated.rejected) or any(meta["gate"]["removed"] for meta in gated.accepted.values())
    else:
        assert any(redraws[key] for key in gated.accepted)  # samples whose doubted objects the second draw kept


def test_a_user_can_turn_the_second_draw_off(tmp_path):
    settings = PipelineSettings(data_dir=tmp_path, shard_size=3, gate_redraw=False)
    backends = lazy_backends("cpu")
    tracker = lambda: TrackerThatDoubtsEverything(backends.point_tracker(), 2.0)
    partition = next(iter(partition_rows(settings)))
    for stage in STAGES[: STAGES.index("point_maps") + 1]:
        run_stage(stage, partition, settings, StageBackends(backends.object_extractor, backends.segmenter, backends.depth_estimator, tracker))

    store = StageStore(settings.stages_dir)
    assert not any("redraw_disagreement_px" in meta for meta in store.read_index("tracks_3d", partition).accepted.values())
    gated = store.read_index("point_maps", partition)  # the objects called hidden where they are seen are removed, as before the second draw
    assert any(row["reason"] == "track_failure" for row in gated.rejected) or any(meta["gate"]["removed"] for meta in gated.accepted.values())


def test_stage_removes_lost_objects_and_rejects_samples_left_without_any(tmp_path):
    settings = PipelineSettings(data_dir=tmp_path, shard_size=3)
    backends = lazy_backends("cpu")
    frozen = StageBackends(backends.object_extractor, backends.segmenter, backends.depth_estimator, lambda: TrackerThatLosesEverything(backends.point_tracker()))
    partition = next(iter(partition_rows(settings)))
    for stage in STAGES[:-1]:
        run_stage(stage, partition, settings, frozen)

    index = StageStore(settings.stages_dir).read_index("point_maps", partition)
    failures = [row for row in index.rejected if row["reason"] == "track_failure"]
    removed = [entry for meta in index.accepted.values() for entry in meta["gate"]["removed"]]
    assert failures and all("judged lost" in row["detail"] for row in failures)
    assert len(index.accepted) + len(index.rejected) == 3  # nothing dropped silently
    for key, meta in index.accepted.items():
        valid = StageStore(settings.stages_dir).read_arrays("point_maps", partition, key)["valid"]
        labels = StageStore(settings.stages_dir).read_arrays("reference_masks", partition, key)["labels"]
        assert all(not valid[labels == entry["object_id"]].any() for entry in meta["gate"]["removed"])
        assert meta["stats"]["point_maps"]["objects_removed"] == len(meta["gate"]["removed"])
    assert removed or not index.accepted

    run_stage(STAGES[-1], partition, settings, frozen)  # the default retention, accepted-only, keeps the gated synthetic samples'
    gated = sorted(row["key"] for row in failures)  # files: the card's tracking figures measure their lost objects too
    assert sorted(folder.name for folder in settings.stages_dir.glob(f"smoothed_tracks/{partition}/*/")) == sorted([*gated, *index.accepted])


def test_an_object_is_judged_at_its_last_frame_in_view_by_the_median_over_its_visible_points():
    labels = np.array([1, 1, 1, 2, 2, 0])
    truth = np.zeros((3, 6, 3))
    tracks = np.zeros((3, 6, 3))
    tracks[-1, :3, 0] = [1.0, 3.0, 50.0]  # object 1: errors 1, 3, 50 px -> median 3
    tracks[-1, 3:5, 1] = [9.0, 11.0]  # object 2: 9 and 11 px, but the 11 px point is hidden -> 9
    visible = np.ones((3, 6), bool)
    visible[-1, 4] = False

    assert object_last_seen_errors(tracks, labels, truth, visible) == {1: 3.0, 2: 9.0}
    hidden_at_end = visible.copy()
    hidden_at_end[-1, :3] = False  # object 1 is hidden at the last frame: judged at frame 1, where it was 40 px off
    tracks[1, :3, 0] = 40.0
    assert object_last_seen_errors(tracks, labels, truth, hidden_at_end)[1] == 40.0
    assert np.isnan(object_last_seen_errors(tracks, labels, truth, np.zeros((3, 6), bool))[1])  # never seen after frame 0


def test_an_object_is_judged_at_its_worst_frame_by_the_stricter_test():
    labels = np.array([1, 1, 1, 2, 2, 0])
    truth = np.zeros((3, 6, 3))
    tracks = np.zeros((3, 6, 3))
    tracks[1, :3, 0] = [20.0, 30.0, 40.0]  # object 1: 30 px off at frame 1 (median), back on target at the end
    tracks[-1, :3, 0] = [1.0, 2.0, 3.0]
    tracks[-1, 3:5, 1] = [9.0, 11.0]  # object 2: right at frame 1, 9 px at the end once the 11 px point is hidden
    visible = np.ones((3, 6), bool)
    visible[-1, 4] = False

    assert object_last_seen_errors(tracks, labels, truth, visible) == {1: 2.0, 2: 9.0}
    assert object_worst_frame_errors(tracks, labels, truth, visible) == {1: 30.0, 2: 9.0}
    visible[1, :3] = False  # not seen at frame 1: its error there does not count
    assert object_worst_frame_errors(tracks, labels, truth, visible)[1] == 2.0
    assert np.isnan(object_worst_frame_errors(tracks, labels, truth, np.zeros((3, 6), bool))[1])
