"""Fair comparison (seed 000): a variant starts bit for bit from a base run's adapters, and the log shows the seed's
banners, magnitudes and WEIGHT INITIALIZATION SUMMARY with the right labels."""

import pytest
import torch
from helpers import quick_train_config

from crossgraft.anomaly.config import CrossAttentionConfig
from crossgraft.anomaly.train import train
from crossgraft.graft import CheckpointError

CROSS = CrossAttentionConfig(variant="cross_attn")


def summaries(log: str) -> list[list[str]]:
    """The rows of every WEIGHT INITIALIZATION SUMMARY in a log."""
    blocks = log.split("WEIGHT INITIALIZATION SUMMARY")[1:]
    return [[line for line in block.split("=" * 70)[1].strip().splitlines()] for block in blocks]


def test_fair_comparison_loads_base_adapters_bit_identical_and_prints_the_summary(
    trained_run, synthetic_root, tmp_path, capsys
):
    run = tmp_path / "cross"
    config = quick_train_config(
        synthetic_root,
        run,
        text_epoch=0,
        image_epoch=0,
        cross=CROSS,
        load_base_text_adapter=trained_run / "text_adapter.pth",
        load_base_image_adapter=trained_run / "image_adapter.pth",
    )
    model = train(config)
    printed = capsys.readouterr().out
    for line in (
        "LOADING PRE-TRAINED BASE TEXT ADAPTER",
        "✓ Base text adapter loaded successfully!",
        "WEIGHT INITIALIZATION SUMMARY",
        "STAGE 1: TEXT ADAPTER TRAINING WITH CROSS-ATTENTION",
        "LOADING PRE-TRAINED BASE IMAGE ADAPTER",
        "STAGE 2: IMAGE ADAPTER TRAINING WITH CROSS-ATTENTION",
        "Mean weight magnitude:",
    ):
        assert line in printed, line
    for key, value in torch.load(trained_run / "text_adapter.pth")["text_adapter"].items():
        assert torch.equal(model.text_adapter.state_dict()[key], value), key
    for key, value in torch.load(trained_run / "image_adapter.pth")["image_adapter"].items():
        assert torch.equal(model.image_adapter.state_dict()[key], value), key
    stage1, stage2 = summaries((run / "train_cross_attention.log").read_text())
    assert [row.split()[0] for row in stage1] == [
        "text_adapter:",
        "text_cross_attn:",
        "image_adapter:",
        "image_cross_attn:",
    ]
    assert [row.split("(")[-1] for row in stage1] == [
        "pre-trained)",
        "random init - NEW)",
        "pre-trained)",
        "random init - NEW)",
    ]
    # --text_epoch 0: stage 1 trained nothing, so stage 2 must not claim it did
    assert [row.split("(")[-1] for row in stage2] == [
        "pre-trained)",
        "random init - NEW)",
        "pre-trained)",
        "random init - NEW)",
    ]


@pytest.mark.slow  # trains several runs
def test_summary_labels_after_a_trained_stage_1_and_in_later_feedback_rounds(synthetic_root, tmp_path):
    run = tmp_path / "fb"
    train(quick_train_config(synthetic_root, run, image_epoch=1, cross=CROSS, num_feedback_loops=2))
    labels = [
        [row.split("(")[-1].rstrip(")") for row in rows]
        for rows in summaries((run / "train_cross_attention.log").read_text())
    ]
    assert labels == [
        ["random init", "random init - NEW", "random init", "random init - NEW"],  # loop 1, stage 1
        ["updated from Stage 1", "trained in Stage 1", "random init", "random init - NEW"],  # loop 1, stage 2
        ["from loop 1"] * 4,  # loop 2, stage 1
        ["updated from Stage 1", "trained in Stage 1", "from loop 1", "from loop 1"],  # loop 2, stage 2
    ]


def test_small_weights_warn(trained_run, synthetic_root, tmp_path, capsys):
    checkpoint = torch.load(trained_run / "text_adapter.pth")
    checkpoint["text_adapter"] = {k: v * 0.01 for k, v in checkpoint["text_adapter"].items()}
    torch.save(checkpoint, tmp_path / "tiny_weights.pth")
    train(
        quick_train_config(
            synthetic_root,
            tmp_path / "run",
            text_epoch=0,
            image_epoch=0,
            cross=CrossAttentionConfig(variant="text_cross_attn"),
            load_base_text_adapter=tmp_path / "tiny_weights.pth",
        )
    )
    assert "[WARNING] mean weight magnitude" in capsys.readouterr().out


def test_bad_base_checkpoints_stop_before_anything_is_written(trained_run, synthetic_root, tmp_path):
    run = tmp_path / "never"
    with pytest.raises(CheckpointError, match="no 'image_adapter' entry .*text adapter checkpoint"):
        train(
            quick_train_config(
                synthetic_root, run, cross=CROSS, load_base_image_adapter=trained_run / "text_adapter.pth"
            )
        )
    broken = torch.load(trained_run / "image_adapter.pth")
    broken["image_adapter"]["layer_adapters.0.fc.0.weight"] = torch.zeros(1024, 1024)
    del broken["image_adapter"]["det_proj.fc.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as info:
        train(quick_train_config(synthetic_root, run, cross=CROSS, load_base_image_adapter=tmp_path / "broken.pth"))
    assert "layer_adapters.0.fc.0.weight: checkpoint has shape (1024, 1024), the model expects (96, 96)" in str(
        info.value
    )
    assert "missing in the checkpoint: det_proj.fc.weight" in str(info.value)
    assert not run.exists()  # nothing written


def test_a_variant_run_is_no_base_to_start_from(cross_run, synthetic_root, tmp_path):
    with pytest.raises(CheckpointError, match="holds 'image_cross_attn' weights.*is loading base adapters"):
        train(
            quick_train_config(
                synthetic_root,
                tmp_path / "x",
                cross=CROSS,
                load_base_image_adapter=cross_run / "image_adapter_cross_attn.pth",
            )
        )
