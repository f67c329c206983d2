"""`llava plot-runs`: the figure's lines are the numbers in each run's trainer_state.json."""

import json

import pytest
from PIL import Image

from crossgraft.cli import main
from crossgraft.errors import DataError
from crossgraft.llava.plots import read_history, runs_figure, state_file


def write_state(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": records, "global_step": 3}))


def records(scale):
    rows = [
        {"step": s, "loss": scale * 3 / s, "samples_per_second": 10.0 * s, "step_time_s": 0.1 * s} for s in (1, 2, 3)
    ]
    return rows + [{"step": 3, "eval_loss": scale * 1.5}, {"step": 3, "train_loss": 9.0, "train_runtime": 1.0}]


def test_each_run_is_drawn_from_its_log_history(tmp_path, capsys):
    write_state(tmp_path / "base", records(1.0))
    write_state(tmp_path / "alt" / "checkpoint-2", records(5.0)[:1])  # an unfinished run: its latest checkpoint
    write_state(tmp_path / "alt" / "checkpoint-10", records(2.0))
    assert state_file(tmp_path / "alt") == tmp_path / "alt" / "checkpoint-10" / "trainer_state.json"
    runs = [read_history(str(tmp_path / "base")), read_history(f"alternating={tmp_path / 'alt'}")]
    assert [r.name for r in runs] == ["base", "alternating"]
    loss_axes, speed_axes, time_axes = runs_figure(runs).axes
    lines = {line.get_label(): line for line in loss_axes.lines}
    assert list(lines["base"].get_xdata()) == [1, 2, 3]
    assert list(lines["alternating"].get_ydata()) == pytest.approx([6.0, 3.0, 2.0])
    assert list(lines["alternating eval"].get_ydata()) == [3.0] and lines["alternating eval"].get_linestyle() == "--"
    assert list(speed_axes.lines[0].get_ydata()) == [10.0, 20.0, 30.0]
    assert list(time_axes.lines[1].get_ydata()) == pytest.approx([0.1, 0.2, 0.3])

    out = tmp_path / "curves"
    assert main(["llava", "plot-runs", str(tmp_path / "base"), f"alt={tmp_path / 'alt'}", "--out", str(out)]) == 0
    assert Image.open(out.with_suffix(".png")).size == (1800, 450) and out.with_suffix(".svg").is_file()
    assert "2 run(s)" in capsys.readouterr().out


def test_runs_without_throughput_or_records_say_so(tmp_path, capsys):
    write_state(tmp_path / "plain", [{"step": 1, "loss": 2.0}])
    write_state(tmp_path / "empty", [])
    figure = runs_figure([read_history(str(tmp_path / "plain"))])
    assert "--throughput_log_steps" in figure.axes[1].texts[0].get_text()
    assert (
        main(["llava", "plot-runs", str(tmp_path / "plain"), str(tmp_path / "empty"), "--out", str(tmp_path / "f")])
        == 0
    )
    assert "empty logged no loss yet" in capsys.readouterr().out


def test_a_folder_without_a_state_or_a_broken_state_is_named(tmp_path):
    with pytest.raises(DataError, match="no trainer_state.json"):
        read_history(str(tmp_path))
    (tmp_path / "trainer_state.json").write_text("{not json")
    with pytest.raises(DataError, match="not a Trainer state file"):
        read_history(str(tmp_path))
