"""The training loop: exact resume, one run per folder, NaN guard, bad input, feedback rounds, vanishing-gradient
warnings, and data-parallel training equal to one process on the same global batch."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import adapter_weights, launch_failure, torchrun
from helpers import quick_train_config as quick_config

import crossgraft.anomaly.train as train_module
from crossgraft.anomaly.config import AdapterConfig, CrossAttentionConfig, TrainConfig
from crossgraft.anomaly.data import DataError
from crossgraft.anomaly.run_folder import RUN_CONFIG, load_run_config
from crossgraft.anomaly.train import TrainingError, train
from crossgraft.errors import ConfigError
from crossgraft.graft import CheckpointError
from crossgraft.lock import RunFolderInUse


def test_the_run_folder_records_the_config_and_what_it_resolved(trained_run, synthetic_root):
    saved = load_run_config(trained_run)
    assert saved.config == quick_config(synthetic_root, trained_run)
    assert (saved.image_size, saved.surgery_from) == (64, 2)
    assert (saved.quirks.vv_mode, saved.quirks.gelu, saved.quirks.stage1_last_level_only) == ("batch", "exact", True)
    document = json.loads((trained_run / RUN_CONFIG).read_text())
    assert document["format"] == "crossgraft.anomaly.run/1" and document["cross"]["variant"] == "base"
    assert len((trained_run / "train_samples.jsonl").read_text().splitlines()) == 18  # every image (full shot)


@pytest.mark.slow  # trains several runs
def test_resume_after_an_interrupt_reaches_the_same_weights(synthetic_root, tmp_path):
    whole = tmp_path / "whole"
    train(quick_config(synthetic_root, whole, text_epoch=2, image_epoch=2))
    parts = tmp_path / "parts"
    train(quick_config(synthetic_root, parts, text_epoch=1, image_epoch=0))  # stopped after text epoch 1
    train(quick_config(synthetic_root, parts, text_epoch=2, image_epoch=1, resume=True))  # stopped after image 1
    train(quick_config(synthetic_root, parts, text_epoch=2, image_epoch=2, resume=True))
    for name, key in (("text_adapter.pth", "text_adapter"), ("image_adapter.pth", "image_adapter")):
        a = torch.load(whole / name, map_location="cpu")[key]
        b = torch.load(parts / name, map_location="cpu")[key]
        for param in a:
            assert torch.equal(a[param], b[param]), f"{name}:{param}"
    log = (parts / "train.log").read_text()
    assert "resuming: text adapter at epoch 1 of 2" in log and "resuming: image adapter at epoch 1 of 2" in log


def test_an_existing_run_is_never_overwritten_without_resume(trained_run, synthetic_root):
    before = (trained_run / "image_adapter.pth").read_bytes()
    with pytest.raises(TrainingError, match=r"holds a base run \(run_config.json, image_adapter.pth.*pass --resume"):
        train(quick_config(synthetic_root, trained_run))
    assert (trained_run / "image_adapter.pth").read_bytes() == before


def test_a_run_of_another_variant_or_configuration_is_refused_in_a_used_folder(trained_run, synthetic_root):
    before = (trained_run / RUN_CONFIG).read_text()
    cross = CrossAttentionConfig(variant="cross_attn")
    with pytest.raises(TrainingError, match=r"holds a base run .*another --save_path") as refused:
        train(quick_config(synthetic_root, trained_run, cross=cross))
    assert "--resume" not in str(refused.value)  # a resume would be refused too: it is not suggested
    assert "variant: base -> cross_attn" in str(refused.value)
    with pytest.raises(TrainingError, match=r"cannot resume the base run .*\(variant: base -> cross_attn\)"):
        train(quick_config(synthetic_root, trained_run, cross=cross, resume=True))
    with pytest.raises(TrainingError, match=r"seed: 7 -> 8"):
        train(quick_config(synthetic_root, trained_run, seed=8, resume=True))
    with pytest.raises(TrainingError, match=r"relu: False -> True"):
        train(quick_config(synthetic_root, trained_run, adapter=AdapterConfig(relu=True), resume=True))
    assert (trained_run / RUN_CONFIG).read_text() == before
    assert not list(trained_run.glob("*cross_attn*"))


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
    real = train_module.stage2_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 5 else loss  # epoch 1 has 5 steps at batch 4

    monkeypatch.setattr(train_module, "stage2_loss", flaky)
    with pytest.raises(TrainingError, match=r"stage-2 loss became nan at epoch 2.*image_adapter.pth"):
        train(quick_config(synthetic_root, tmp_path, text_epoch=0, image_epoch=3))
    assert torch.load(tmp_path / "image_adapter.pth", map_location="cpu")["epoch"] == 1
    assert not (tmp_path / "image_adapter_2.pth").exists()


def test_bad_training_input(synthetic_root, tmp_path):
    with pytest.raises(DataError, match=r"--shot 20 needs 10 normal images"):
        train(quick_config(synthetic_root, tmp_path / "a", full_shot=False, shot=20))
    with pytest.raises(DataError, match=r"unknown class\(es\) \['bottle'\]"):
        train(quick_config(synthetic_root, tmp_path / "b", classes=["bottle"]))
    empty = tmp_path / "empty"
    (empty / "cls" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        train(quick_config(empty, tmp_path / "c"))
    with pytest.raises(ConfigError, match="text_adapt_until=9 but the text encoder has 4 blocks"):
        train(quick_config(synthetic_root, tmp_path / "d", adapter=AdapterConfig(text_adapt_until=9)))
    assert not any((tmp_path / name).exists() for name in "abcd")  # refused before anything was written


def test_the_default_backbone_is_the_papers_and_a_tiny_run_says_so_loudly(trained_run):
    assert TrainConfig().backbone.clip == "openai/clip-vit-large-patch14-336"
    assert TrainConfig().backbone.image_size == 518
    log = (trained_run / "train.log").read_text()
    assert log.count("WARNING !!! the backbone is the random `tiny` CLIP") == 1


def test_vanishing_gradients_are_warned(synthetic_root, tmp_path):
    run = tmp_path / "zero"
    # a fixed text cross-attention weight of 0 cuts the module off: its gradient is exactly zero
    cross = CrossAttentionConfig(variant="text_cross_attn", text_cross_attn_weight=0.0)
    train(quick_config(synthetic_root, run, image_epoch=1, cross=cross))
    log = (run / "train_cross_attention.log").read_text()
    assert (run / "train.log").read_text() == log  # every run writes train.log; a variant the seed's name too
    assert (run / "plots" / "training.png").is_file() and (run / "plots" / "training.svg").is_file()
    assert "average gradient norm of text_cross_attn is 0.00e+00 < 1e-03" in log
    assert "average gradient norm of text_adapter" not in log


@pytest.mark.slow  # trains several runs
def test_feedback_with_two_loops_writes_both_loops_checkpoints_and_metrics(synthetic_root, tmp_path):
    run = tmp_path / "feedback"
    train(
        quick_config(
            synthetic_root,
            run,
            image_epoch=1,
            cross=CrossAttentionConfig(variant="cross_attn"),
            num_feedback_loops=2,
            eval_each_loop=True,
            eval_classes=["dots"],
        )
    )
    for loop in (1, 2):
        folder = run / f"loop_{loop}"
        for name in (
            "text_adapter_cross_attn.pth",
            "image_adapter_cross_attn.pth",
            "image_adapter_cross_attn_1.pth",
            "run_config.json",
        ):
            assert (folder / name).exists(), folder / name
        assert load_run_config(folder).loop == loop
        results = json.loads((folder / "eval" / "results.json").read_text())
        assert set(results["classes"]) == {"dots"} and results["mean"]["pixel_auroc"] is not None
    log = (run / "train_cross_attention.log").read_text()
    assert "FEEDBACK LOOP 2/2" in log and "loop 1 metrics" in log and "loop 2 metrics" in log
    assert "(from loop 1)" in log
    second = torch.load(run / "loop_2" / "image_adapter_cross_attn.pth")["image_adapter"]
    first = torch.load(run / "loop_1" / "image_adapter_cross_attn.pth")["image_adapter"]
    assert any(not torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(
        torch.load(run / "image_adapter_cross_attn.pth")["image_adapter"]["det_proj.fc.weight"],
        second["det_proj.fc.weight"],
    )  # the run folder holds the last loop's weights


def _train_command(synthetic_root, save_path, batch_size):
    return [
        "-m",
        "crossgraft",
        "anomaly",
        "train",
        "--dataset",
        "synthetic",
        "--data_root",
        str(synthetic_root),
        "--classes",
        "dots",  # one class: the anchors' orthogonality term is the same on any part of a batch
        "--shot",
        "4",  # 2 normal + 2 anomalous images: one global batch of 4 per epoch
        "--clip",
        "tiny",
        "--img_size",
        "64",
        "--text_epoch",
        "2",
        "--image_epoch",
        "2",
        "--text_batch_size",
        str(batch_size),
        "--image_batch_size",
        str(batch_size),
        "--preset",
        "fixed",  # V-V over tokens: an image's stage-1 features do not depend on its batch
        "--save_path",
        str(save_path),
        "--device",
        "cpu",
    ]


@pytest.mark.slow  # starts processes
def test_two_processes_train_like_one_on_the_same_global_batch(synthetic_root, tmp_path):
    """torchrun with 2 processes x batch 2 gives the weights of 1 process x batch 4: gradients are averaged
    across processes. (Without the all-reduce each process would step on its own half: the weights of 1 process
    x batch 2, which differ.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, batch in (("single4", 4), ("single2", 2)):
        runs[name] = tmp_path / name
        result = subprocess.run(
            [sys.executable, *_train_command(synthetic_root, runs[name], batch)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    runs["ddp"] = tmp_path / "ddp"
    command = [*torchrun(2), *_train_command(synthetic_root, runs["ddp"], 2)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, launch_failure(result)
    assert result.stdout.count("training on 4 images") == 1  # only the main process logs
    assert (runs["ddp"] / "train.log").read_text().count("training image epoch 1") == 1
    single4, single2, ddp = (adapter_weights(runs[name]) for name in ("single4", "single2", "ddp"))
    for key, value in single4.items():
        torch.testing.assert_close(ddp[key], value, atol=2e-6, rtol=1e-4, msg=key)
    assert max((single2[key] - value).abs().max().item() for key, value in single4.items()) > 1e-4


def hold_lock(folder):
    """A process that holds the run folder's lock until it is killed."""
    code = (
        "import sys, time; from crossgraft.lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow  # starts processes
def test_one_writer_per_run_folder_and_a_killed_holder_frees_it(synthetic_root, tmp_path):
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        with pytest.raises(RunFolderInUse, match=rf"run is in use by another run \(pid {holder.pid} on .*, started 20"):
            train(quick_config(synthetic_root, run))
        assert [p.name for p in run.iterdir()] == [".crossgraft.lock"]  # nothing of the refused run
    finally:
        holder.kill()
        holder.wait()
    train(quick_config(synthetic_root, run, image_epoch=1))  # kill -9 released the lock
    assert (run / "image_adapter.pth").is_file()
    assert f"pid {os.getpid()}" in (run / ".crossgraft.lock").read_text()  # the last holder is named


def test_a_resume_from_a_broken_checkpoint_fails_before_anything_is_written(trained_run, synthetic_root, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    (run / "image_adapter.pth").write_bytes((run / "image_adapter.pth").read_bytes()[:100])  # cut short
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".crossgraft.lock"}
    with pytest.raises(CheckpointError, match=r"image_adapter.pth: not a readable PyTorch checkpoint"):
        train(quick_config(synthetic_root, run, image_epoch=3, resume=True))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name in before} == before
    checkpoint = torch.load(run / "text_adapter.pth")
    del checkpoint["text_optimizer"]  # a public-code file has no optimizer state to resume
    torch.save(checkpoint, run / "text_adapter.pth")
    shutil.copy(trained_run / "image_adapter.pth", run / "image_adapter.pth")
    with pytest.raises(
        CheckpointError, match=r"text_adapter.pth: no 'text_optimizer' entry, so training cannot resume"
    ):
        train(quick_config(synthetic_root, run, image_epoch=3, resume=True))


def test_a_learning_rate_that_breaks_the_weights_stops_the_run_in_the_log_too(synthetic_root, tmp_path):
    run = tmp_path / "huge"
    with pytest.raises(TrainingError) as info:
        train(quick_config(synthetic_root, run, text_epoch=0, image_epoch=3, image_lr=1e30))
    message = str(info.value)
    assert any(
        reason in message
        for reason in ("weights became non-finite", "no gradient reached the image side's weights", "loss became")
    ), message
    assert "training stopped" in message
    assert message in (run / "train.log").read_text()  # the reason is in the run's log, not only on stderr
    saved = sorted(p.name for p in run.glob("image_adapter_*.pth"))
    for name in saved:  # whatever was saved before the stop is finite
        state = torch.load(run / name)["image_adapter"]
        assert all(torch.isfinite(value).all() for value in state.values()), name


def test_an_epoch_without_any_gradient_stops_the_run(synthetic_root, tmp_path, monkeypatch):
    def no_gradient(stage, epoch, last_checkpoint):
        for parameter in stage.parameters:
            parameter.grad = None
        return 1.0, dict.fromkeys(stage.groups, 0.0)

    monkeypatch.setattr(train_module.StageRunner, "run_epoch", lambda self, *a: no_gradient(*a))
    with pytest.raises(TrainingError, match=r"no gradient reached the text side's weights in a whole epoch"):
        train(quick_config(synthetic_root, tmp_path / "flat"))
    assert "every gradient norm is exactly 0" in (tmp_path / "flat" / "train.log").read_text()
    assert not (tmp_path / "flat" / "text_adapter.pth").exists()


def test_the_stage1_feature_cache_refuses_settings_that_would_make_it_stale(synthetic_root, tmp_path):
    from crossgraft.anomaly.config import QuirkConfig

    with pytest.raises(ConfigError, match="stage-1 augmentation is on.*batch axis.*--preset fixed sets both"):
        quick_config(synthetic_root, tmp_path, cache_stage1_features=True)
    with pytest.raises(ConfigError, match="batch axis"):
        quick_config(synthetic_root, tmp_path, cache_stage1_features=True, quirks=QuirkConfig(stage1_augment="off"))
    fixed = quick_config(synthetic_root, tmp_path, cache_stage1_features=True, quirks=QuirkConfig(preset="fixed"))
    assert fixed.quirks.resolve().stage1_augment is False


def stage1_losses(run_dir):
    lines = (run_dir / "train.log").read_text().splitlines()
    return [float(line.split("loss: ")[1].split(" ")[0]) for line in lines if "training text epoch" in line]


@pytest.mark.slow  # trains several runs
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", 1e-3)])
def test_cached_stage1_features_train_like_computed_ones(synthetic_root, tmp_path, monkeypatch, dtype, tolerance):
    import crossgraft.anomaly.feature_cache as feature_cache
    from crossgraft.anomaly.config import QuirkConfig

    settings = dict(text_epoch=3, image_epoch=0, quirks=QuirkConfig(preset="fixed"))
    train(quick_config(synthetic_root, tmp_path / "computed", **settings))
    computed_calls = []
    original = feature_cache.stage1_features
    monkeypatch.setattr(feature_cache, "stage1_features", lambda *a: computed_calls.append(len(a[1])) or original(*a))
    train(
        quick_config(
            synthetic_root, tmp_path / "cached", cache_stage1_features=True, stage1_cache_dtype=dtype, **settings
        )
    )
    assert sum(computed_calls) == 18  # each of the 18 training images once, in the first text epoch only
    expected, got = stage1_losses(tmp_path / "computed"), stage1_losses(tmp_path / "cached")
    assert len(got) == 3 and max(abs(a - b) for a, b in zip(expected, got)) <= tolerance, (expected, got)
    cached, computed = (
        torch.load(tmp_path / run / "text_adapter.pth")["text_adapter"] for run in ("cached", "computed")
    )
    for key, value in computed.items():
        assert torch.allclose(value, cached[key], atol=50 * tolerance), key
    assert not list((tmp_path / "cached").glob("*.cache.npy"))  # removed when stage 1 ended


TRAINED = {1: ("text_adapter", "text_cross_attn"), 2: ("image_adapter", "image_cross_attn")}
MODULES = ("backbone", "text_adapter", "text_cross_attn", "image_adapter", "image_cross_attn")


def record_training_modes(monkeypatch) -> list[tuple[int, dict[str, bool]]]:
    """(stage, {module: training}) at every optimizer step: each step computes its loss once, so the loss
    functions the loop calls record the modes the step runs in."""
    records: list[tuple[int, dict[str, bool]]] = []

    def recording(loss_function, stage):
        def loss(model, *args, **kwargs):
            records.append((stage, {name: getattr(model, name).training for name in MODULES}))
            return loss_function(model, *args, **kwargs)

        return loss

    monkeypatch.setattr(train_module, "stage1_loss", recording(train_module.stage1_loss, 1))
    monkeypatch.setattr(train_module, "stage2_loss", recording(train_module.stage2_loss, 2))
    return records


@pytest.mark.slow  # trains several runs
def test_every_trained_stage_of_every_round_trains_in_training_mode(synthetic_root, tmp_path, monkeypatch):
    """Stage 1 trains the text side and stage 2 the image side in training mode (so --cross_attn_dropout acts) in
    every feedback round, after the anchors and the evaluation built in between; everything else, the frozen CLIP
    above all, stays in eval mode."""
    records = record_training_modes(monkeypatch)
    cross = CrossAttentionConfig(variant="cross_attn", cross_attn_dropout=0.1)
    train(
        quick_config(
            synthetic_root,
            tmp_path / "run",
            ["dots"],
            image_epoch=2,
            num_feedback_loops=2,
            eval_each_loop=True,
            cross=cross,
        )
    )
    steps_per_round = 2 + 2 * 2  # 6 images (batches of 4): 2 steps a text epoch, 2 a image epoch
    assert [stage for stage, _ in records] == ([1] * 2 + [2] * 4) * 2
    assert len(records) == 2 * steps_per_round
    for step, (stage, modes) in enumerate(records):
        expected = {name: name in TRAINED[stage] for name in MODULES}
        assert modes == expected, f"optimizer step {step} (round {step // steps_per_round + 1}, stage {stage})"


def test_the_image_cross_attention_drops_out_in_training_mode_only():
    from crossgraft.anomaly.backbone import load_clip
    from crossgraft.anomaly.model import AdaptedCLIP

    torch.manual_seed(0)
    model = AdaptedCLIP(
        load_clip("tiny"), cross=CrossAttentionConfig(variant="image_cross_attn", cross_attn_dropout=0.5)
    )
    images = torch.randn(2, 3, model.backbone.image_size, model.backbone.image_size)
    context = model.text_side(["dots", "dots"]).sentences  # (B, S, E)
    with torch.no_grad():
        model.image_cross_attn.train()
        first, second = (model(images, text_context=context).det_token for _ in range(2))
        assert not torch.equal(first, second)  # dropout draws a new mask each pass
        model.image_cross_attn.eval()
        first, second = (model(images, text_context=context).det_token for _ in range(2))
        assert torch.equal(first, second)


def test_anchors_and_evaluations_restore_the_modes_they_found():
    from crossgraft.anomaly.backbone import load_clip
    from crossgraft.anomaly.model import AdaptedCLIP, evaluation_mode

    model = AdaptedCLIP(load_clip("tiny"), cross=CrossAttentionConfig(variant="cross_attn"))
    model.train_only([model.image_adapter, model.image_cross_attn])
    before = {name: module.training for name, module in model.named_modules()}
    with evaluation_mode(model):
        assert not any(module.training for module in model.modules())
    assert {name: module.training for name, module in model.named_modules()} == before
    assert model.image_cross_attn.training and not model.text_cross_attn.training and not model.backbone.training


def float64_training_trace(synthetic_root, save_path, variant, monkeypatch):
    """A short run of `variant` at cross-attention strength 0, in float64 throughout (the tiny CLIP included):
    the loss of every step, the adapters after every optimizer step, and the cross-attention weights it started
    and ended with."""
    from crossgraft.anomaly.backbone import load_clip

    trace: dict = {"losses": [], "adapters": [], "model": None}

    def float64_backbone(config, gelu, device):
        return load_clip(
            config.clip, image_size=config.image_size, gelu=gelu, tokenizer=config.tokenizer, dtype=torch.float64
        )

    def recording(loss_function):
        def loss(model, *args, **kwargs):
            if trace["model"] is None:
                trace["model"] = model
                trace["cross_start"] = cross_attention_weights(model)
            value = loss_function(model, *args, **kwargs)
            trace["losses"].append(value.item())
            return value

        return loss

    class RecordingAdam(train_module.Adam):
        def step(self, closure=None):
            result = super().step(closure)
            model = trace["model"]
            trace["adapters"].append(
                {f"{side}.{k}": v.clone() for side in ("text_adapter", "image_adapter")
                 for k, v in getattr(model, side).state_dict().items()}
            )  # fmt: skip
            return result

    monkeypatch.setattr(train_module, "load_backbone", float64_backbone)
    monkeypatch.setattr(train_module, "stage1_loss", recording(train_module.stage1_loss))
    monkeypatch.setattr(train_module, "stage2_loss", recording(train_module.stage2_loss))
    monkeypatch.setattr(train_module, "Adam", RecordingAdam)
    cross = CrossAttentionConfig(variant=variant, text_cross_attn_weight=0.0, image_cross_attn_weight=0.0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the adapters and cross-attention are made in float64 too
    try:
        train(quick_config(synthetic_root, save_path, ["dots"], text_epoch=2, image_epoch=4, cross=cross))
    finally:
        torch.set_default_dtype(default_dtype)
    trace["cross_end"] = cross_attention_weights(trace["model"])
    return trace


def cross_attention_weights(model) -> dict:
    return {
        f"{name}.{key}": value.detach().clone()
        for name in ("text_cross_attn", "image_cross_attn")
        if getattr(model, name) is not None
        for key, value in getattr(model, name).state_dict().items()
    }


@pytest.mark.slow  # trains several runs
def test_a_variant_at_zero_strength_trains_step_for_step_like_the_base(synthetic_root, tmp_path, monkeypatch):
    """The variants' one guarantee (they have no public code): with their cross-attention weights at 0, a run of
    both stages on the real data pipeline, with the base run's seed and therefore its start adapters, follows the
    base run's losses and adapter weights at every optimizer step, in float64; the cross-attention does not move.
    Image cross-attention adds exactly 0; the text variants run the text path in another order (within 1e-10)."""
    with monkeypatch.context() as patches:  # each run's recorders are undone after it
        base = float64_training_trace(synthetic_root, tmp_path / "base", "base", patches)
    assert len(base["losses"]) == len(base["adapters"]) == 2 * 2 + 4 * 2  # 6 images, batches of 4
    assert base["adapters"][0]["text_adapter.0.fc.0.weight"].dtype == torch.float64
    for variant, tolerance in (("image_cross_attn", 0.0), ("text_cross_attn", 1e-10), ("cross_attn", 1e-10)):
        with monkeypatch.context() as patches:
            run = float64_training_trace(synthetic_root, tmp_path / variant, variant, patches)
        assert len(run["losses"]) == len(base["losses"]), variant
        for step, (got, expected) in enumerate(zip(run["losses"], base["losses"])):
            assert abs(got - expected) <= tolerance, f"{variant}: loss of step {step}: {got} vs {expected}"
        for step, (got, expected) in enumerate(zip(run["adapters"], base["adapters"])):
            for key, value in expected.items():
                difference = (got[key] - value).abs().max().item()
                assert difference <= tolerance, f"{variant}: {key} after step {step} is {difference:.2e} off"
        assert run["cross_start"] and run["cross_start"].keys() == run["cross_end"].keys()
        for key, value in run["cross_start"].items():
            assert torch.equal(run["cross_end"][key], value), f"{variant}: {key} moved at strength 0"


def test_the_log_counts_the_whole_run_with_an_eta(trained_run):
    log = (trained_run / "train.log").read_text()
    lines = [line for line in log.splitlines() if " run: " in line]
    assert [line.split(" run: ")[1].split(" epochs")[0] for line in lines] == ["1 of 3", "2 of 3", "3 of 3"]
    assert "about 0:00 left); image epoch 1 finished" in lines[-1]
    assert "training image epoch 1: loss" in log  # the public code's 0-based numbering, as the progress bar shows
