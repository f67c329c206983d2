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
    assert lines[off + 1].strip() == "turn --plots off"
