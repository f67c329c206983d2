"""The `crossgraft` dispatcher: families, version, the module entry point, and errors that exit 2."""

import subprocess
import sys

import pytest

from crossgraft import __version__
from crossgraft.cli import main


def test_top_level_help_lists_the_families(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "anomaly" in out and "llava" in out
    assert main([]) == 2


def test_version_and_unknown_family(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"crossgraft {__version__}"
    assert main(["vision"]) == 2
    assert "unknown family 'vision'" in capsys.readouterr().err


@pytest.mark.slow  # starts a process
def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "crossgraft", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "families:" in result.stdout


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only project errors become one-line messages; anything else is a bug and is not hidden."""
    import crossgraft.anomaly.cli as anomaly_cli

    def broken(config):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(
        anomaly_cli.COMMANDS,
        "features",
        anomaly_cli.COMMANDS["features"].__class__(anomaly_cli.COMMANDS["features"].config, broken, "h", "d"),
    )
    try:
        main(["anomaly", "features", "--clip", "tiny"])
    except ZeroDivisionError as error:
        assert str(error) == "a bug"
    else:
        raise AssertionError("the bug was swallowed")


def test_a_flag_that_is_on_by_default_has_a_short_off_switch(capsys):
    with pytest.raises(SystemExit):
        main(["anomaly", "test", "--help"])
    lines = capsys.readouterr().out.splitlines()
    off = next(i for i, line in enumerate(lines) if line.strip().startswith("--no_plots"))
    assert " ".join(lines[off].split()) in ("--no_plots turn --plots off", "--no_plots") and "turn --plots off" in (
        lines[off] + lines[off + 1]
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["anomaly", "--help"],
        ["llava", "--help"],
        ["anomaly", "train", "--help"],
        ["anomaly", "predict", "--help"],
        ["anomaly", "train", "--datset", "MVTec"],
        ["anomaly", "train", "--config", "/no/such/file.yaml"],
        ["llava", "evaluate", "--help"],
        ["llava", "export", "--help"],
        ["llava", "evaluate", "--modle", "x"],
    ],
    ids=" ".join,
)
def test_help_and_argument_errors_come_before_torch_and_transformers_load(argv):
    probe = (
        "import sys\nfrom crossgraft.cli import main\n"
        f"try:\n    code = main({argv!r})\nexcept SystemExit as stop:\n    code = stop.code\n"
        "print('loaded:', sorted({'torch', 'transformers'} & set(sys.modules)), 'exit:', code)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("loaded: []"), (last, result.stderr[-2000:])
    assert last.endswith("exit: 0") == (argv[-1] in ("--help", "--version")), last


REQUIRED = {  # each command's required arguments (some __post_init__ checks need real paths: tmp is filled in)
    ("anomaly", "test"): ["--save_path", "{tmp}/run"],
    ("anomaly", "predict"): ["{tmp}", "--save_path", "{tmp}/run", "--class_name", "dots"],
    ("anomaly", "export"): ["--save_path", "{tmp}/run", "--class_name", "dots", "stripes", "--out", "{tmp}/export"],
    ("anomaly", "serve"): ["--save_path", "{tmp}/run"],
    ("anomaly", "attention-maps"): ["{tmp}", "--save_path", "{tmp}/run"],
    ("anomaly", "compare"): ["base={tmp}/a", "cross={tmp}/b"],
    ("anomaly", "plot-run"): ["{tmp}/run"],
    ("anomaly", "make-synthetic"): ["--out", "{tmp}/synthetic"],
    ("anomaly", "k-shot"): ["--shot", "4"],
    ("anomaly", "descriptions"): ["--source", "{tmp}/constants.py", "--out", "{tmp}/descriptions.json"],
    ("llava", "make-sample"): ["--out", "{tmp}/sample"],
    ("llava", "make-tiny"): ["--out", "{tmp}/tiny"],
    ("llava", "evaluate"): ["--model_name_or_path", "{tmp}/run", "--data_path", "{tmp}/held_out.json"],
    ("llava", "compare"): ["base={tmp}/a", "alternating={tmp}/b"],
    ("llava", "export"): ["{tmp}/export", "--model_name_or_path", "{tmp}/run"],
    ("llava", "merge-lora"): ["{tmp}/merged", "--model_name_or_path", "{tmp}/run"],
    ("llava", "plot-runs"): ["{tmp}/run"],
    ("llava", "train"): ["--output_dir", "{tmp}/out", "--learning_rate", "0.0003", "--lr_scheduler_type", "cosine"],
}


def all_commands():
    from crossgraft.anomaly.cli import COMMANDS as ANOMALY
    from crossgraft.llava.cli import COMMANDS as LLAVA

    return [("anomaly", name) for name in ANOMALY] + [("llava", name) for name in LLAVA]


@pytest.mark.parametrize("family, command", all_commands(), ids=lambda value: value)
def test_print_config_prints_yaml_that_config_reads_back_to_the_same_configuration(family, command, tmp_path, capsys):
    from crossgraft.anomaly.cli import COMMANDS as ANOMALY
    from crossgraft.args import command_parser
    from crossgraft.llava.cli import COMMANDS as LLAVA

    (tmp_path / "run").mkdir()
    spec = (ANOMALY if family == "anomaly" else LLAVA)[command]
    argv = [part.format(tmp=tmp_path) for part in REQUIRED.get((family, command), [])]
    expected = command_parser(family, command, spec).parse(argv)
    with pytest.raises(SystemExit) as stop:
        command_parser(family, command, spec).parse([*argv, "--print_config"])
    printed = capsys.readouterr().out
    assert stop.value.code == 0 and printed.startswith(f"# crossgraft {family} {command}: the full configuration")
    assert printed.count("\n# ") >= 2, "every setting comes with its help as a comment"
    path = tmp_path / "printed.yaml"
    path.write_text(printed)
    assert command_parser(family, command, spec).parse(["--config", str(path)]) == expected
