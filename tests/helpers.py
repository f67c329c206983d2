"""Small builders shared by test modules (on sys.path through pytest's `pythonpath`)."""

from dataclasses import replace

from crossgraft.anomaly.config import BackboneConfig, DataConfig, TrainConfig


def quick_train_config(root, save_path, classes=None, **changes) -> TrainConfig:
    """A seconds-long AA-CLIP run on the synthetic set with the tiny CLIP; `changes` override any field."""
    config = TrainConfig(
        data=DataConfig(dataset="synthetic", data_root=root, classes=classes),
        backbone=BackboneConfig(clip="tiny", img_size=64),
        save_path=save_path,
        full_shot=True,
        text_epoch=1,
        image_epoch=2,
        text_batch_size=4,
        image_batch_size=4,
        seed=7,
        device="cpu",
    )
    return replace(config, **changes)
