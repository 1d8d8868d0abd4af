"""Bad command-line arguments end in argparse's one-line error and exit code 2, before any work starts."""

from __future__ import annotations

import pytest

from pointvid_pipeline.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--shard-size", "-1"], "argument --shard-size: must be at least 1, got -1"),
        (["run", "--shard-size", "0"], "argument --shard-size: must be at least 1, got 0"),
        (["partitions", "--shard-size", "many"], "argument --shard-size: invalid positive_int value: 'many'"),
        (["run", "--manifest", "no/such/manifest.csv"], "--manifest no/such/manifest.csv: no such file"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written: the run must stop before it starts
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(message), errors
    assert not any(tmp_path.iterdir())


POINTVID_VARIABLES = ("POINTVID_DATA_DIR", "POINTVID_MANIFEST", "POINTVID_SHARD_SIZE", "POINTVID_PROFILE", "POINTVID_MANIFEST_ENCODING", "DAGSTER_HOME")


@pytest.fixture
def clean_environment(monkeypatch):
    """main() writes the arguments into os.environ (as Dagster reads them): undo that after the test."""
    for name in POINTVID_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _one_error_line(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize("command", ["run", "partitions"])
def test_a_manifest_without_a_video_column_exits_2_naming_the_columns_before_anything_is_written(command, clean_environment, capsys, tmp_path):
    manifest = tmp_path / "clips.csv"
    manifest.write_text("Clip,Caption\n01_dog.mp4,A dog.\n")
    data_dir = tmp_path / "data"
    with pytest.raises(SystemExit) as exited:
        main([command, "--manifest", str(manifest), "--data-dir", str(data_dir)])
    assert exited.value.code == 2
    error = _one_error_line(capsys)
    assert error.endswith("found columns ['Clip', 'Caption'] (comma-separated, utf-8); name it one of video, path, url, video_path, video_url, file, filename (case and spaces ignored), or use the Panda-70M layout (videoID, url, timestamp, caption)")
    assert not data_dir.exists()


def test_bad_settings_and_files_given_for_folders_exit_2_with_one_line(clean_environment, capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    clean_environment.setenv("POINTVID_MANIFEST_ENCODING", "klingon")
    cases = [
        (["run", "--data-dir", str(tmp_path / "data")], "POINTVID_MANIFEST_ENCODING: unknown encoding 'klingon' (e.g. cp1252, latin-1, utf-8)"),
        (["partitions", "--data-dir", str(a_file)], f"--data-dir {a_file}: is a file, not a folder"),
        (["stats", str(tmp_path), "--out", str(a_file)], f"--out {a_file}: is a file, not a folder"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert _one_error_line(capsys).endswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
