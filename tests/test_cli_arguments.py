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
