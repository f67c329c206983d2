"""k-shot sampling, the joint train transform, and the synthetic generator."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from crossgraft.anomaly.data import (
    AnomalyDataset,
    AugmentConfig,
    DataError,
    EvalTransform,
    TrainTransform,
    load_samples,
    sample_k_shot,
    write_jsonl,
)
from crossgraft.anomaly.data.formats import read_jsonl
from crossgraft.anomaly.data.synthetic import DEFECTS, SyntheticConfig, class_names, make_synthetic_dataset
from crossgraft.anomaly.data.transforms import CLIP_MEAN, CLIP_STD


def test_k_shot_is_balanced_reproducible_and_written_as_jsonl(synthetic_root, tmp_path):
    samples = load_samples("synthetic", synthetic_root)
    first = sample_k_shot(samples, 4, seed=111)
    again = sample_k_shot(samples, 4, seed=111)
    other = sample_k_shot(samples, 4, seed=112)
    assert first == again and first != other
    for name in {s.class_name for s in samples}:
        chosen = [s for s in first if s.class_name == name]
        assert sorted(s.label for s in chosen) == [0, 0, 1, 1]
    # a class's pick does not depend on which other classes are present
    one_class = [s for s in samples if s.class_name == first[0].class_name]
    assert sample_k_shot(one_class, 4, seed=111) == [s for s in first if s.class_name == first[0].class_name]
    path = write_jsonl(first, tmp_path / "shots.jsonl", root=synthetic_root)
    assert not json.loads(path.read_text().splitlines()[0])["image_path"].startswith("/")
    assert read_jsonl(path, synthetic_root) == first


def test_k_shot_errors(synthetic_root):
    samples = load_samples("synthetic", synthetic_root)
    with pytest.raises(DataError, match="even number"):
        sample_k_shot(samples, 3, seed=0)
    with pytest.raises(DataError, match=r"--shot 8 needs 4 normal images of class 'checker', but it has only 3"):
        sample_k_shot(samples, 8, seed=0)


def square_image_and_mask(size=64):
    image = np.full((size, size, 3), 40, np.uint8)
    image[10:26, 30:50] = (250, 20, 20)  # a red rectangle exactly where the mask is
    mask = np.zeros((size, size), np.uint8)
    mask[10:26, 30:50] = 255
    return Image.fromarray(image), Image.fromarray(mask)


def denormalise(tensor):
    return tensor * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_moves_image_and_mask_together(seed):
    torch.manual_seed(seed)
    image, mask = square_image_and_mask()
    transform = TrainTransform(
        64, AugmentConfig(color_jitter=False, rotate_p=1, translate_p=1, hflip_p=0.5, vflip_p=0.5)
    )
    pixels, mask_tensor = transform(image, mask)
    assert set(mask_tensor.unique().tolist()) <= {0.0, 1.0} and mask_tensor.sum() > 0
    red = denormalise(pixels)[0] > 0.7
    inside = red[mask_tensor > 0].float().mean()
    outside = red[mask_tensor == 0].float().mean()
    assert inside > 0.9 and outside < 0.02


def test_train_transform_is_seeded_and_jitter_only_touches_colour():
    image, mask = square_image_and_mask()
    transform = TrainTransform(32)
    torch.manual_seed(5)
    a = transform(image, mask)
    torch.manual_seed(5)
    b = transform(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    jitter_only = TrainTransform(64, AugmentConfig(jitter_p=1, rotate_p=0, translate_p=0, hflip_p=0, vflip_p=0))
    torch.manual_seed(0)
    jittered, jitter_mask = jitter_only(image, mask)
    plain, plain_mask = EvalTransform(64)(image, mask)
    assert torch.equal(jitter_mask, plain_mask) and not torch.allclose(jittered, plain)


def test_test_transform_shapes_and_normalisation():
    image, mask = square_image_and_mask()
    pixels, mask_tensor = EvalTransform(48)(image, mask)
    assert pixels.shape == (3, 48, 48) and mask_tensor.shape == (48, 48)
    background = denormalise(pixels)[:, 40, 5]
    torch.testing.assert_close(background, torch.full((3,), 40 / 255), atol=0.02, rtol=0)


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_synthetic_generator_layout_determinism_and_exact_masks(tmp_path):
    config = SyntheticConfig(classes=2, train_per_class=2, test_per_class=8, size=48, seed=3)
    counts = make_synthetic_dataset(tmp_path / "a", config)
    make_synthetic_dataset(tmp_path / "b", config)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    make_synthetic_dataset(tmp_path / "c", SyntheticConfig(2, 2, 8, 48, seed=4))
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")

    assert list(counts) == class_names(2) == ["stripes", "checker"]
    assert counts["stripes"] == {"train_good": 2, "test_good": 4, "scratch": 2, "spot": 1, "missing": 1}
    samples = load_samples("synthetic", tmp_path / "a")
    assert len(samples) == 16 and {s.defect_type for s in samples if s.label == 1} == set(DEFECTS)
    for sample in (s for s in samples if s.label == 1):
        mask = np.asarray(Image.open(sample.mask_path))
        assert set(np.unique(mask)) == {0, 255}
        # the painted region stands out: its colour differs from the ring of pixels around it
        image = np.asarray(Image.open(sample.image_path)).astype(float)
        inside = mask > 0
        from scipy import ndimage

        ring = ndimage.binary_dilation(inside, iterations=3) & ~inside
        assert np.abs(image[inside].mean(0) - image[ring].mean(0)).max() > 20, sample.image_path
    assert class_names(10)[8:] == ["stripes2", "checker2"]
    with pytest.raises(ValueError, match="--test_per_class >= 2"):
        make_synthetic_dataset(tmp_path / "d", SyntheticConfig(test_per_class=1))


def test_dataset_items(synthetic_root):
    samples = load_samples("synthetic", synthetic_root)
    item = AnomalyDataset(samples, EvalTransform(32))[len(samples) - 1]
    assert item["image"].shape == (3, 32, 32) and item["label"].item() == 1 and item["mask"].sum() > 0


def test_seeded_augmentation_depends_only_on_the_seed_and_the_index(synthetic_root):
    """What image i gets does not depend on the global RNG, the order of loading or the loader: the same with any
    number of processes or workers."""
    from crossgraft.anomaly.data import TrainTransform, load_samples

    samples = load_samples("synthetic", synthetic_root, classes=["dots"])
    transform = TrainTransform(64)
    torch.manual_seed(0)
    in_order = [AnomalyDataset(samples, transform, seed=5)[i]["image"] for i in range(len(samples))]
    torch.manual_seed(1)
    reloaded = AnomalyDataset(samples, transform, seed=5)
    backwards = {i: reloaded[i]["image"] for i in reversed(range(len(samples)))}
    assert all(torch.equal(backwards[i], image) for i, image in enumerate(in_order))
    other_seed = AnomalyDataset(samples, transform, seed=6)
    assert sum(not torch.equal(other_seed[i]["image"], in_order[i]) for i in range(len(samples))) >= len(samples) - 1
