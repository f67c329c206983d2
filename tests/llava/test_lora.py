"""LoRA (peft) on the language model: identity at init, what trains, save / merge / reload, resume, refusals."""

import copy
import json

import pytest
import torch
from helpers import QUIET
from safetensors.torch import load_file, save_file

from crossgraft.cli import main
from crossgraft.graft import CheckpointError
from crossgraft.llava import MODEL_CLASSES
from crossgraft.llava.configuration import IMAGE_TOKEN_INDEX, LlavaConfigError
from crossgraft.llava.loading import load_model, read_state_dict
from crossgraft.llava.lora import (
    NON_LORA_FILE,
    add_lora,
    apply_lora_folder,
    lora_base,
    lora_target_pattern,
)
from crossgraft.llava.sample import build_tiny_tokenizer, tiny_llava_config

BASE, CROSS = "llava_qwen", "llava_qwen_with_alternating_cross_attn"
LORA = ["--lora_enable", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0"]


def batch():
    generator = torch.Generator().manual_seed(4)
    input_ids = torch.randint(0, 250, (2, 10), generator=generator)
    input_ids[0, 2] = input_ids[1, 4] = IMAGE_TOKEN_INDEX
    attention_mask = torch.tensor([[1] * 10, [1] * 7 + [0] * 3])
    return dict(
        input_ids=input_ids, attention_mask=attention_mask, images=torch.randn(2, 3, 32, 32, generator=generator)
    )


def logits(model):
    with torch.no_grad():
        return model(**batch()).logits


def open_gates(model):
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("_gate"):
                parameter.fill_(0.5)
    return model


@pytest.mark.parametrize("kind, overrides", [(BASE, {}), (CROSS, {"xattn_every_n_layers": 2})])
def test_lora_at_init_gives_bit_identical_logits(kind, overrides):
    torch.manual_seed(0)
    model = open_gates(MODEL_CLASSES[kind](tiny_llava_config(kind, build_tiny_tokenizer(), **overrides)).eval())
    reference = logits(copy.deepcopy(model))
    wrapped = add_lora(model, r=8, alpha=16, dropout=0.05, base="unused").eval()
    assert torch.equal(logits(wrapped), reference)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in wrapped.named_modules() if n.endswith(".lora_A")}
    assert len(adapted) == 4 * 7  # every attention and MLP projection of the 4 decoder layers, nothing else
    assert not any(".xattn." in n or "vision_tower" in n or "mm_projector" in n for n in adapted)


def lora_run(source, sample, out, *extra, backbone=False):
    model_flags = (
        ["--backbone_model", str(source), "--init_from_backbone", "--variant", "alternating_cross"]
        + ["--xattn_every_n_layers", "2", "--vision_tower", str(source.parent / "siglip")]
        if backbone
        else ["--model_name_or_path", str(source)]
    )
    return [
        *model_flags,
        "--data_path", str(sample), "--output_dir", str(out), "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--seed", "0", *QUIET, *LORA, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained_lora_run(tiny_models, llava_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    flags = lora_run(tiny_models[CROSS], llava_sample, out, "--max_steps", "6", "--save_strategy", "no")
    assert main(["llava", "train", *flags]) == 0
    return out


def test_steps_change_only_the_adapters_and_the_parts_chosen_to_train(trained_lora_run, tiny_models):
    out = trained_lora_run
    assert lora_base(out) == str(tiny_models[CROSS].resolve())
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    assert len(lora_b) == 28 and all(tensor.abs().sum() > 0 for tensor in lora_b)  # B starts at zero
    base = read_state_dict(str(tiny_models[CROSS]))
    full = load_file(str(out / NON_LORA_FILE))
    # the default --mm_tunable_parts mm_mlp_adapter,mm_language_model: the projector in full, plus the gated blocks
    # (always); the language model (image_newline included, as LLaVA-NeXT counts it) only through its adapters, the
    # tower not at all
    assert {name.split(".")[1] for name in full} == {"mm_projector", "xattn"}  # image_newline: frozen, as LLaVA-NeXT
    assert all(not torch.equal(tensor, base[name]) for name, tensor in full.items() if not name.endswith("_gate"))
    merged = load_model(str(out)).state_dict()
    for name, tensor in merged.items():
        adapted = name.startswith("model.layers.") and name.endswith("_proj.weight")
        if name in full:
            assert torch.equal(tensor, full[name]), name
        elif adapted:
            assert not torch.equal(tensor, base[name]), name  # merged: W + B·A·alpha/r
        elif name in base:
            assert torch.equal(tensor, base[name]), name  # the tower, embeddings, norms, biases, image_newline


def test_merge_then_reload_gives_the_logits_of_the_unmerged_model(trained_lora_run, tmp_path):
    out = trained_lora_run
    base = load_model(lora_base(out))
    unmerged = apply_lora_folder(base, out, json.loads((out / "config.json").read_text())).eval()
    before = logits(unmerged)
    merged_folder = tmp_path / "merged"
    assert main(["llava", "merge-lora", str(merged_folder), "--model_name_or_path", str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in merged_folder.iterdir()}
    reloaded = load_model(str(merged_folder)).eval()
    assert type(reloaded).__name__ == "LlavaQwenWithAlternatingCrossAttnForCausalLM"
    difference = (logits(reloaded) - before).abs().max().item()
    assert difference <= 1e-5, difference
    assert not torch.allclose(logits(load_model(lora_base(out)).eval()), before, atol=1e-3)  # training did act


@pytest.mark.slow  # trains several runs
def test_a_lora_run_from_a_backbone_writes_its_base_resumes_and_merges(tiny_models, llava_sample, tmp_path):
    """Built from a bare Qwen2 (a random gated block, a copied tower): the frozen start goes to OUTPUT_DIR/base
    once. Cut at step 4 and resumed to 6, the run ends where an uninterrupted one does."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    source = tiny_models["qwen2"]
    assert main(["llava", "train", *lora_run(source, llava_sample, whole, "--max_steps", "6", backbone=True)]) == 0
    steps = ["--save_steps", "4"]
    assert (
        main(["llava", "train", *lora_run(source, llava_sample, cut, "--max_steps", "4", *steps, backbone=True)]) == 0
    )
    base_files = {p.name: p.stat().st_mtime_ns for p in (cut / "base").iterdir()}
    flags = lora_run(source, llava_sample, cut, "--max_steps", "6", *steps, "--merge_lora", backbone=True)
    assert main(["llava", "train", *flags]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (cut / "base").iterdir()} == base_files  # written once
    log = (cut / "train_alternating.log").read_text()
    assert f"resuming from {cut / 'checkpoint-4'}" in log and "written when this run started" in log
    assert lora_base(cut) == str((cut / "base").resolve())
    for name in ("adapter_model.safetensors", NON_LORA_FILE):
        ours, reference = load_file(str(cut / name)), load_file(str(whole / name))
        assert ours.keys() == reference.keys()
        for key in ours:
            assert torch.allclose(ours[key], reference[key], atol=1e-6), (name, key)
    # --merge_lora: an ordinary checkpoint beside the adapter, equal to the adapters applied
    assert (cut / "merged" / "model.safetensors").is_file() and not (cut / "merged" / "adapter_config.json").exists()
    merged = logits(load_model(str(cut / "merged")).eval())
    unmerged = logits(
        apply_lora_folder(load_model(str(cut / "base")), cut, json.loads((cut / "config.json").read_text())).eval()
    )
    assert (merged - unmerged).abs().max() <= 1e-5


def test_lora_settings_that_cannot_work_are_refused_before_anything_is_written(
    tiny_models, llava_sample, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "never"
    frozen_language = lora_run(tiny_models[BASE], llava_sample, out, "--mm_tunable_parts", "mm_mlp_adapter")
    assert main(["llava", "train", *frozen_language]) == 2
    assert "add mm_language_model to --mm_tunable_parts, or drop --lora_enable" in capsys.readouterr().err
    assert (
        main(
            [
                "llava",
                "train",
                "--model_name_or_path",
                "x",
                "--data_path",
                "y",
                "--output_dir",
                str(out),
                "--merge_lora",
            ]
        )
        == 2
    )
    assert "--merge_lora merges LoRA adapters; it needs --lora_enable" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "peft", None)  # peft not installed
    assert main(["llava", "train", *lora_run(tiny_models[BASE], llava_sample, out)]) == 2
    assert "pip install 'crossgraft[lora]'" in capsys.readouterr().err
    assert not out.exists()


def test_a_model_with_no_linear_layers_to_adapt_is_refused():
    model = MODEL_CLASSES[BASE](tiny_llava_config(BASE, build_tiny_tokenizer(), num_hidden_layers=0))
    with pytest.raises(LlavaConfigError, match="the llava_qwen model has no torch.nn.Linear layer under model.layers"):
        lora_target_pattern(model)


def test_broken_lora_folders_name_what_is_wrong(trained_lora_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_lora_run, broken)
    tensors = load_file(str(broken / NON_LORA_FILE))
    tensors["model.image_newline"] = torch.zeros(3)
    save_file(tensors, str(broken / NON_LORA_FILE))
    with pytest.raises(CheckpointError, match=r"model.image_newline has shape \(3,\) but the model's is \(64,\)"):
        load_model(str(broken))
    (broken / NON_LORA_FILE).unlink()
    with pytest.raises(
        CheckpointError, match="non_lora_trainables.safetensors is missing: this LoRA run folder is incomplete"
    ):
        load_model(str(broken))
    with pytest.raises(CheckpointError, match="is not a LoRA run folder"):
        main_merge = __import__("crossgraft.llava.export", fromlist=["merge_lora"]).merge_lora
        main_merge(lora_base(trained_lora_run), tmp_path / "out")


def broken_copy(run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(run, broken)
    return broken


def cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def rewrite_config(folder, **changes):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def grow_lora_a(folder):
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    key = next(name for name in sorted(tensors) if "lora_A" in name)
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1)
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def bin_adapter(folder):
    adapter = folder / "adapter_model.safetensors"
    torch.save(load_file(str(adapter)), folder / "adapter_model.bin")
    adapter.unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: cut(f / "adapter_config.json"), r"adapter_config.json: not valid json"),
        (lambda f: (f / "adapter_config.json").write_text("[]"), r"adapter_config.json: expected a JSON object"),
        (lambda f: rewrite_config(f, r=0), r"'r' \(the LoRA rank\) must be a whole number > 0, not 0"),
        (lambda f: rewrite_config(f, peft_type="IA3"), r"a IA3 adapter; crossgraft loads LoRA adapters"),
        (lambda f: cut(f / "adapter_model.safetensors"), r"adapter_model.safetensors is incomplete or corrupt"),
        (lambda f: cut(f / NON_LORA_FILE), r"non_lora_trainables.safetensors is incomplete or corrupt"),
        (lambda f: (f / NON_LORA_FILE).write_bytes(b"\xff" * 64), r"non_lora_trainables.safetensors is incomplete"),
        (lambda f: (f / "adapter_model.safetensors").unlink(), r"adapter_model.safetensors is missing"),
        (bin_adapter, r"holds its adapter as adapter_model.bin, a pickle, .*Convert it once"),
        (lambda f: rewrite_config(f, base_model_name_or_path=str(f)), r"as its base model, which is a LoRA run folder"),
        (
            grow_lora_a,
            r"down_proj.lora_A.weight has shape \(4, 129\) but model.layers.0.mlp.down_proj "
            r"\(a 128 -> 64 linear layer\) needs \(4, 128\)",
        ),
        (
            lambda f: rewrite_config(f, r=8),
            r"lora_A.weight has shape \(4, 128\) but .* needs \(8, 128\): .*another --lora_r",
        ),
    ],
)
def test_every_file_of_a_lora_folder_is_checked_and_named(trained_lora_run, tmp_path, capsys, damage, message):
    broken = broken_copy(trained_lora_run, tmp_path)
    damage(broken)
    with pytest.raises(CheckpointError, match=message):
        load_model(str(broken))
    assert main(["llava", "merge-lora", str(tmp_path / "m"), "--model_name_or_path", str(broken)]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and [line for line in error.splitlines() if "error" in line][0].startswith("error:")
    assert not (tmp_path / "m").exists()


def test_adapters_get_gradients_under_gradient_checkpointing_on_text_only_batches():
    """Frozen embeddings and no image: the checkpointed layers' inputs need no gradient, the adapters still do."""
    torch.manual_seed(0)
    model = MODEL_CLASSES[BASE](tiny_llava_config(BASE, build_tiny_tokenizer()))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("mm_projector" in name)
    wrapped = add_lora(model, r=4, alpha=8, dropout=0.0, base="unused")
    wrapped.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    wrapped.train()
    input_ids = torch.randint(0, 200, (2, 12))
    wrapped(input_ids=input_ids, labels=input_ids).loss.backward()
    grads = [p.grad for name, p in wrapped.named_parameters() if "lora_B" in name]  # A gets none while B is 0
    assert len(grads) == 28 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_peft_causal_lm_wrapping_as_llava_next_does_it_works(tiny_models):
    """LLaVA-NeXT wraps with task_type="CAUSAL_LM": forward and generate run through the wrapper unchanged at init."""
    peft = pytest.importorskip("peft")
    model = load_model(str(tiny_models[BASE])).eval()
    inputs = batch()
    with torch.no_grad():
        reference = model(**inputs).logits
        tokens = model.generate(inputs["input_ids"][:1, :5], None, inputs["images"][:1], max_new_tokens=3,
                                eos_token_id=1, pad_token_id=0)  # fmt: skip
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=lora_target_pattern(model))
    wrapped = peft.get_peft_model(model, config).eval()
    assert type(wrapped).__name__ == "PeftModelForCausalLM"
    with torch.no_grad():
        assert torch.equal(wrapped(**inputs).logits, reference)  # lora_B starts at zero
        again = wrapped.generate(input_ids=inputs["input_ids"][:1, :5], images=inputs["images"][:1],
                                 max_new_tokens=3, eos_token_id=1, pad_token_id=0)  # fmt: skip
    assert torch.equal(again, tokens)


def test_llava_next_targets_adapt_what_llava_next_adapts(tiny_models):
    """LLaVA-NeXT's suffix rule: the language model's linear layers and the tower's q/k/v, never the projector,
    the gated blocks or lm_head (which train in full or stay as they are)."""
    model = load_model(str(tiny_models[CROSS]))
    wrapped = add_lora(model, 4, 8, 0.0, "base", targets="llava_next")
    adapted = {name.removeprefix("base_model.model.").removesuffix(".lora_A")
               for name, _ in wrapped.named_modules() if name.endswith(".lora_A")}  # fmt: skip
    language = {name for name in adapted if name.startswith("model.layers.")}
    tower = {name for name in adapted if "vision_tower" in name}
    assert language and tower and adapted == language | tower
    assert {name.rsplit(".", 1)[-1] for name in tower} == {"q_proj", "k_proj", "v_proj"}
    decoder_only = add_lora(load_model(str(tiny_models[CROSS])), 4, 8, 0.0, "base")
    default = {n for n, _ in decoder_only.named_modules() if n.endswith(".lora_A")}
    assert len(default) == len(language) and all("vision_tower" not in n and "xattn" not in n for n in default)
