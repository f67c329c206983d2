"""The prompt ensemble's class text: descriptions from a json file or from the public code's REAL_NAMES table, read
as data (never run), recorded by a run, used at test time, and a warning exactly when the prompts differ from the
public code's."""

import json

import pytest
from helpers import quick_train_config

from crossgraft.anomaly.config import DataConfig, EvalConfig, QuirkConfig
from crossgraft.anomaly.evaluate import evaluate
from crossgraft.anomaly.prompts import class_sentences, class_text, descriptions_for, load_class_descriptions
from crossgraft.anomaly.run_folder import load_run_config
from crossgraft.anomaly.train import train
from crossgraft.cli import main
from crossgraft.errors import ConfigError

STAND_IN = '''"""A stand-in for the public AA-CLIP dataset/constants.py: running it would fail and leave a marker."""
import os

os.makedirs({marker!r}, exist_ok=True)
raise RuntimeError("this file was executed")

BASE_PATH = "/data/somewhere"
REAL_NAMES = {{
    "MVTec": {{"dots": "grey fabric with round dots", "stripes": "striped cloth"}},
    "VisA": {{"candle": "white candle"}},
}}
'''


@pytest.fixture
def public_checkout(tmp_path):
    marker = tmp_path / "executed"
    (tmp_path / "AA-CLIP" / "dataset").mkdir(parents=True)
    (tmp_path / "AA-CLIP" / "dataset" / "constants.py").write_text(STAND_IN.format(marker=str(marker)))
    return tmp_path / "AA-CLIP", marker


def test_the_prompt_ensemble():
    normal, abnormal = class_sentences("metal nut")
    assert normal == [
        "metal nut.",
        "a photo of metal nut.",
        "a metal nut.",
        "a photo of a metal nut.",
        "the metal nut.",
        "a photo of the metal nut.",
    ]
    assert (
        len(abnormal) == 10
        and abnormal[0] == "a damaged metal nut."
        and abnormal[-1] == "a photo of a metal nut with damage."
    )
    assert (
        class_text("metal_nut") == "metal nut" and class_text("pcb1", {"pcb1": "a circuit board"}) == "a circuit board"
    )


def test_the_public_table_is_read_as_data_and_never_run(public_checkout):
    checkout, marker = public_checkout
    for source in (checkout, checkout / "dataset" / "constants.py"):
        table = load_class_descriptions(source)
        assert table == {
            "MVTec": {"dots": "grey fabric with round dots", "stripes": "striped cloth"},
            "VisA": {"candle": "white candle"},
        }
    assert not marker.exists()
    assert descriptions_for(table, "VisA") == {"candle": "white candle"}
    assert descriptions_for(table, None)["candle"] == "white candle"  # predict: every dataset's classes
    with pytest.raises(ConfigError, match=r"have no table for dataset BTAD; they have: MVTec, VisA"):
        descriptions_for(table, "BTAD")


@pytest.mark.parametrize(
    "text, message",
    [
        ("REAL_NAMES = {'MVTec': {'dots': 'x'}\n", r"constants.py: not a readable Python file"),
        ("REAL_NAMES = dict(MVTec={'dots': 'x'})\n", r"constants.py, line 1: REAL_NAMES is not a literal table"),
        ("NAMES = {'MVTec': {'dots': 'x'}}\n", r"no REAL_NAMES = \{...\} table"),
        ("REAL_NAMES = {'MVTec': {'dots': 3}}\n", r"the descriptions of MVTec must be strings \(dots\)"),
    ],
)
def test_bad_public_tables_are_named(tmp_path, text, message):
    (tmp_path / "constants.py").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_class_descriptions(tmp_path / "constants.py")


def test_other_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="must be the public AA-CLIP checkout"):
        load_class_descriptions(tmp_path)
    with pytest.raises(ConfigError, match="class description file not found"):
        load_class_descriptions(tmp_path / "none.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ConfigError, match="expected a mapping of class names to descriptions, found list"):
        load_class_descriptions(tmp_path / "list.json")


def test_the_descriptions_command_writes_editable_json(public_checkout, tmp_path, capsys):
    checkout, marker = public_checkout
    assert (
        main(
            [
                "anomaly",
                "descriptions",
                "--from",
                str(checkout),
                "--dataset",
                "mvtec",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m.json").read_text()) == {
        "dots": "grey fabric with round dots",
        "stripes": "striped cloth",
    }
    assert "2 class descriptions written" in capsys.readouterr().out
    assert main(["anomaly", "descriptions", "--from", str(checkout), "--out", str(tmp_path / "all.json")]) == 0
    assert load_class_descriptions(tmp_path / "all.json") == load_class_descriptions(checkout)
    assert (
        main(
            ["anomaly", "descriptions", "--from", str(checkout), "--dataset", "BTAD", "--out", str(tmp_path / "b.json")]
        )
        == 2
    )
    assert "have no table for dataset BTAD" in capsys.readouterr().err
    assert not marker.exists()


WARNING = "prompts differ from the public code's"


@pytest.mark.slow  # trains several runs
def test_a_run_records_the_table_test_uses_it_and_the_warning_comes_exactly_when_it_should(
    public_checkout, synthetic_root, tmp_path
):
    checkout, _ = public_checkout
    as_mvtec = DataConfig(dataset="MVTec", data_root=synthetic_root)  # the synthetic folders in MVTec's layout
    described = tmp_path / "described"
    train(quick_train_config(synthetic_root, described, image_epoch=1, data=as_mvtec, class_descriptions=checkout))
    assert WARNING not in (described / "train.log").read_text()
    assert load_run_config(described).descriptions == load_class_descriptions(checkout)  # the whole table
    checkout.rename(tmp_path / "gone")  # the run folder alone is enough
    result = evaluate(EvalConfig(data=as_mvtec, save_path=described, plots=False, out=tmp_path / "test"))
    log = (tmp_path / "test" / "test.log").read_text()
    assert "prompts of dots describe it as 'grey fabric with round dots'" in log and WARNING not in log
    assert "prompts of checker" not in log  # not in the table: its class name
    assert set(result) == {"stripes", "checker", "dots"}

    plain = tmp_path / "plain"
    train(quick_train_config(synthetic_root, plain, image_epoch=1, data=as_mvtec))
    assert WARNING in (plain / "train.log").read_text()  # reference preset, MVTec, no descriptions
    evaluate(EvalConfig(data=as_mvtec, save_path=plain, plots=False, out=tmp_path / "plain_test"))
    assert "--class_descriptions /path/to/AA-CLIP" in (tmp_path / "plain_test" / "test.log").read_text()
    evaluate(
        EvalConfig(
            data=DataConfig(dataset="synthetic", data_root=synthetic_root),
            save_path=plain,
            plots=False,
            out=tmp_path / "synthetic_test",
        )
    )
    assert WARNING not in (tmp_path / "synthetic_test" / "test.log").read_text()  # the public code has none there
    fixed = tmp_path / "fixed"
    train(quick_train_config(synthetic_root, fixed, image_epoch=1, data=as_mvtec, quirks=QuirkConfig(preset="fixed")))
    assert WARNING not in (fixed / "train.log").read_text()  # not claiming to be the public code
