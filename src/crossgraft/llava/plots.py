"""`crossgraft llava plot-runs`: loss and throughput curves of one or several runs on one figure, from each run's
trainer_state.json (the Trainer's own record of every logged step)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from transformers.trainer import TRAINER_STATE_NAME

from crossgraft.errors import DataError
from crossgraft.files import read_text
from crossgraft.llava.train import checkpoint_folders
from crossgraft.plots import empty_axes, integer_ticks, new_figure, save_figure

PANELS = (  # (log key, title, y label)
    ("loss", "training loss (solid) and eval_loss (dashed)", "loss"),
    ("samples_per_second", "throughput", "samples / s"),
    ("step_time_s", "time per optimizer step", "seconds"),
)
NO_THROUGHPUT = "no throughput records: train with --throughput_log_steps N"


@dataclass
class RunHistory:
    """What one run logged: the Trainer's log_history records, each with its step."""

    name: str
    state_file: Path
    records: list[dict]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of every record that holds `key`."""
        rows = [(int(r["step"]), float(r[key])) for r in self.records if key in r and "step" in r]
        return [s for s, _ in rows], [v for _, v in rows]


def state_file(run: Path) -> Path:
    """RUN/trainer_state.json (a finished run), else that of its latest checkpoint-N, or RUN itself if it is one."""
    run = Path(run)
    if run.is_file():
        return run
    if (run / TRAINER_STATE_NAME).is_file():
        return run / TRAINER_STATE_NAME
    checkpoints = [folder for folder in checkpoint_folders(run) if (folder / TRAINER_STATE_NAME).is_file()]
    if not checkpoints:
        raise DataError(
            f"no {TRAINER_STATE_NAME} in {run} or its checkpoint-* folders (has it trained a logged step yet?)"
        )
    return checkpoints[0] / TRAINER_STATE_NAME


def read_history(spec: str) -> RunHistory:
    """`[NAME=]PATH`: a run's output folder (or a trainer_state.json); NAME defaults to the folder's name."""
    name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
    path_file = state_file(Path(path))
    try:
        records = json.loads(read_text(path_file, "trainer state"))["log_history"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path_file}: not a Trainer state file with a log_history ({error!r})") from error
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path_file}: log_history is not a list of records")
    folder = path_file.parent.parent if path_file.parent.name.startswith("checkpoint-") else path_file.parent
    return RunHistory(name or folder.name, path_file, records)


def runs_figure(runs: list[RunHistory]) -> Figure:
    """Loss (and eval loss), samples per second and step time against the optimizer step; one colour per run."""
    figure = new_figure(6 * len(PANELS), 4.5)
    for axes, (key, title, y_label) in zip(figure.subplots(1, len(PANELS)), PANELS):
        drawn = draw_panel(axes, runs, key)
        if not drawn:
            empty_axes(axes, title, NO_THROUGHPUT)
            continue
        axes.set_title(title)
        integer_ticks(axes).set_xlabel("optimizer step")
        axes.set_ylabel(y_label)
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def draw_panel(axes: Axes, runs: list[RunHistory], key: str) -> bool:
    """One line per run (and its eval_loss on the loss panel); whether anything was drawn."""
    drawn = False
    for index, run in enumerate(runs):
        steps, values = run.series(key)
        if steps:
            axes.plot(steps, values, color=f"C{index}", marker="." if len(steps) < 50 else None, label=run.name)
            drawn = True
        if key == "loss":
            eval_steps, eval_values = run.series("eval_loss")
            if eval_steps:
                axes.plot(
                    eval_steps, eval_values, color=f"C{index}", linestyle="--", marker="o", label=f"{run.name} eval"
                )
                drawn = True
    return drawn


@dataclass
class RunsPlot:
    written: list[Path]  # OUT.png, OUT.svg
    without_records: list[str]  # runs that logged no loss yet (nothing of theirs is drawn)


def plot_runs(specs: list[str], out: Path) -> RunsPlot:
    """OUT.png and OUT.svg."""
    runs = [read_history(spec) for spec in specs]
    empty = [run.name for run in runs if not run.series("loss")[0] and not run.series("eval_loss")[0]]
    return RunsPlot(save_figure(runs_figure(runs), out), empty)
