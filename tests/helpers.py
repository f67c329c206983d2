"""Small builders shared by test modules (on sys.path through pytest's `pythonpath`)."""

from dataclasses import replace

from crossgraft.anomaly.train import TrainConfig


def quick_train_config(root, save_path, **changes) -> TrainConfig:
    """A seconds-long AA-CLIP run on the synthetic set with the tiny CLIP; `changes` override any field."""
    config = TrainConfig(
        dataset="synthetic",
        data_root=root,
        save_path=save_path,
        shot=None,
        clip="tiny",
        img_size=64,
        text_epoch=1,
        image_epoch=2,
        text_batch_size=4,
        image_batch_size=4,
        seed=7,
    )
    return replace(config, **changes)
