"""The frozen CLIP backbone: loaders, an independent OpenAI-layout forward pass, positions, V-V attention."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossgraft.anomaly.backbone import (
    BackboneError,
    FrozenCLIP,
    build_tiny_clip,
    default_levels,
    interpolate_position_embedding,
    load_clip,
    read_openai_checkpoint,
)
from crossgraft.anomaly.tiny_tokenizer import build_tiny_tokenizer

# a small OpenAI-format ViT CLIP: 64-wide heads as OpenAI's rule (width // 64) gives 2 heads
V_WIDTH, V_LAYERS, PATCH, GRID = 128, 2, 8, 4
T_WIDTH, T_LAYERS, CONTEXT, EMBED = 128, 2, 77, 32


def openai_state_dict(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    def block(prefix, width):
        return {
            f"{prefix}attn.in_proj_weight": r(3 * width, width),
            f"{prefix}attn.in_proj_bias": r(3 * width),
            f"{prefix}attn.out_proj.weight": r(width, width),
            f"{prefix}attn.out_proj.bias": r(width),
            f"{prefix}ln_1.weight": 1 + r(width),
            f"{prefix}ln_1.bias": r(width),
            f"{prefix}ln_2.weight": 1 + r(width),
            f"{prefix}ln_2.bias": r(width),
            f"{prefix}mlp.c_fc.weight": r(4 * width, width),
            f"{prefix}mlp.c_fc.bias": r(4 * width),
            f"{prefix}mlp.c_proj.weight": r(width, 4 * width),
            f"{prefix}mlp.c_proj.bias": r(width),
        }

    sd = {
        "visual.class_embedding": r(V_WIDTH, scale=1),
        "visual.positional_embedding": r(GRID * GRID + 1, V_WIDTH),
        "visual.conv1.weight": r(V_WIDTH, 3, PATCH, PATCH),
        "visual.ln_pre.weight": 1 + r(V_WIDTH),
        "visual.ln_pre.bias": r(V_WIDTH),
        "visual.ln_post.weight": 1 + r(V_WIDTH),
        "visual.ln_post.bias": r(V_WIDTH),
        "visual.proj": r(V_WIDTH, EMBED),
        "token_embedding.weight": r(vocab_size, T_WIDTH, scale=0.5),
        "positional_embedding": r(CONTEXT, T_WIDTH),
        "ln_final.weight": 1 + r(T_WIDTH),
        "ln_final.bias": r(T_WIDTH),
        "text_projection": r(T_WIDTH, EMBED),
        "logit_scale": torch.tensor(math.log(100.0)),
        "input_resolution": torch.tensor(GRID * PATCH),
        "context_length": torch.tensor(CONTEXT),
        "vocab_size": torch.tensor(vocab_size),
    }
    for i in range(V_LAYERS):
        sd.update(block(f"visual.transformer.resblocks.{i}.", V_WIDTH))
    for i in range(T_LAYERS):
        sd.update(block(f"transformer.resblocks.{i}.", T_WIDTH))
    return sd


# ---------------------------------------------------------- an independent OpenAI-layout forward pass
def ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def reference_block(x, sd, prefix, causal):
    """OpenAI's ResidualAttentionBlock, written out with plain tensor ops (QuickGELU)."""
    width = x.shape[-1]
    heads = width // 64
    h = ln(x, sd, f"{prefix}ln_1")
    qkv = h @ sd[f"{prefix}attn.in_proj_weight"].T + sd[f"{prefix}attn.in_proj_bias"]
    q, k, v = qkv.split(width, dim=-1)
    b, n, _ = x.shape
    q, k, v = (t.reshape(b, n, heads, width // heads).permute(0, 2, 1, 3) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
    if causal:
        logits = logits + torch.full((n, n), float("-inf")).triu(1)
    out = (logits.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, n, width)
    x = x + out @ sd[f"{prefix}attn.out_proj.weight"].T + sd[f"{prefix}attn.out_proj.bias"]
    h = ln(x, sd, f"{prefix}ln_2") @ sd[f"{prefix}mlp.c_fc.weight"].T + sd[f"{prefix}mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)
    return x + h @ sd[f"{prefix}mlp.c_proj.weight"].T + sd[f"{prefix}mlp.c_proj.bias"]


def reference_image(sd, images):
    x = F.conv2d(images, sd["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = ln(torch.cat([cls, x], 1) + sd["visual.positional_embedding"], sd, "visual.ln_pre")
    for i in range(V_LAYERS):
        x = reference_block(x, sd, f"visual.transformer.resblocks.{i}.", causal=False)
    return ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def reference_text(sd, token_ids):
    x = sd["token_embedding.weight"][token_ids] + sd["positional_embedding"][: token_ids.shape[1]]
    for i in range(T_LAYERS):
        x = reference_block(x, sd, f"transformer.resblocks.{i}.", causal=True)
    x = ln(x, sd, "ln_final")
    return x[torch.arange(len(x)), token_ids.argmax(-1)] @ sd["text_projection"]  # EOT has the highest id


def save_torchscript(sd: dict[str, torch.Tensor], path) -> None:
    """Pack a state dict the way OpenAI ships CLIP: a TorchScript archive of a module tree."""

    class Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in sd.items():
        module = root
        *parents, leaf = key.split(".")
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, Holder())
            module = getattr(module, part)
        if value.dim() == 0 and key in ("input_resolution", "context_length", "vocab_size"):
            module.register_buffer(leaf, value)
        else:
            module.register_parameter(leaf, nn.Parameter(value))
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("packing", ["state_dict", "module_prefixed", "torchscript"])
def test_openai_checkpoint_matches_an_independent_forward_pass(tmp_path, tokenizer_dir, packing):
    tokenizer = build_tiny_tokenizer()
    sd = openai_state_dict(len(tokenizer))
    path = tmp_path / "ViT-tiny.pt"
    if packing == "torchscript":
        save_torchscript(sd, path)
    elif packing == "module_prefixed":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        torch.save(sd, path)
    backbone = load_clip(str(path), tokenizer=str(tokenizer_dir))
    assert (backbone.vision_width, backbone.num_vision_layers, backbone.vision_heads) == (V_WIDTH, V_LAYERS, 2)
    assert (backbone.image_size, backbone.grid_size, backbone.embed_dim) == (GRID * PATCH, GRID, EMBED)

    images = torch.randn(3, 3, GRID * PATCH, GRID * PATCH)
    ours = backbone.encode_image(images).image_embed
    torch.testing.assert_close(ours, reference_image(sd, images), atol=1e-5, rtol=1e-4)

    texts = ["a photo of a damaged bottle.", "the screw", "a grid with flaw."]
    token_ids = backbone.tokenize(texts)
    torch.testing.assert_close(backbone.encode_text(texts), reference_text(sd, token_ids), atol=1e-5, rtol=1e-4)


def test_an_openai_torchscript_clip_is_read_without_torch_jit_load(tmp_path, tokenizer_dir, monkeypatch):
    sd = openai_state_dict(len(build_tiny_tokenizer()))
    path = tmp_path / "ViT-tiny.pt"
    save_torchscript({**sd, "input_resolution": torch.tensor(GRID * PATCH)}, path)
    with torch.no_grad():
        theirs = torch.jit.load(str(path), map_location="cpu").state_dict()
    ours = read_openai_checkpoint(path)
    scalars = {"input_resolution", "context_length", "vocab_size"}  # dropped: the model's sizes come from shapes
    assert set(ours) == set(theirs) - scalars and "visual.proj" in ours
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called on a user's file")

    monkeypatch.setattr(torch.jit, "load", refuse)
    backbone = load_clip(str(path), tokenizer=str(tokenizer_dir))
    assert backbone.image_size == GRID * PATCH


def test_non_clip_checkpoint_and_missing_file_are_clear_errors(tmp_path, tokenizer_dir):
    path = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(BackboneError, match="not an OpenAI-format ViT CLIP checkpoint.*visual.conv1.weight"):
        load_clip(str(path), tokenizer=str(tokenizer_dir))
    with pytest.raises(BackboneError, match="not found"):
        load_clip(str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BackboneError, match="not a readable PyTorch checkpoint"):
        load_clip(str(corrupt), tokenizer=str(tokenizer_dir))
    with pytest.raises(BackboneError, match="could not load CLIP"):
        load_clip(str(tmp_path / "no_such_model_dir"))


def test_huggingface_directory_round_trip_and_hf_equivalence(tmp_path):
    clip, tokenizer = build_tiny_clip()
    clip.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    backbone = load_clip(str(tmp_path))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hf_image = clip.get_image_features(pixel_values=images).pooler_output
        hf_hidden = clip.vision_model(pixel_values=images, output_hidden_states=True).hidden_states
        input_ids = backbone.tokenize(["a broken tile.", "wood"])
        hf_text = clip.get_text_features(input_ids=input_ids).pooler_output
    features = backbone.encode_image(images, levels=[1, 5, 8])
    torch.testing.assert_close(features.image_embed, hf_image, atol=1e-5, rtol=1e-4)
    for level, tokens in zip([1, 5, 8], features.level_tokens):
        torch.testing.assert_close(tokens, hf_hidden[level], atol=1e-5, rtol=1e-4)  # [0] is the embeddings
    torch.testing.assert_close(backbone.encode_text(["a broken tile.", "wood"]), hf_text, atol=1e-5, rtol=1e-4)


def test_position_interpolation_is_exact_when_the_grid_is_unchanged():
    table = torch.randn(1 + 24 * 24, 16)
    assert torch.equal(interpolate_position_embedding(table, 24), table)
    resized = interpolate_position_embedding(table, 37)  # 336 px -> 518 px for ViT-L/14
    assert resized.shape == (1 + 37 * 37, 16)
    assert torch.equal(resized[0], table[0])
    smooth = torch.linspace(0, 1, 24).repeat(24, 1).reshape(-1, 1).repeat(1, 16)  # a ramp stays a ramp
    ramp = interpolate_position_embedding(torch.cat([torch.zeros(1, 16), smooth]), 48)[1:, 0].reshape(48, 48)
    assert (ramp[:, 1:] >= ramp[:, :-1] - 1e-6).all()


def test_interpolated_backbone_and_intermediate_token_shapes(tiny_backbone):
    backbone = load_clip("tiny", image_size=128)  # trained at 64 px: 8x8 -> 16x16 patches
    assert backbone.grid_size == 16 and backbone.levels == [2, 4, 6, 8] == default_levels(8)
    features = backbone.encode_image(torch.randn(3, 3, 128, 128))
    assert [tuple(t.shape) for t in features.level_tokens] == [(3, 257, 96)] * 4
    assert features.image_embed.shape == (3, 64)
    assert default_levels(24) == [6, 12, 18, 24] and default_levels(12) == [3, 6, 9, 12]


def test_vv_attention_in_batch_mode_with_one_image_is_projected_v(tiny_backbone):
    x = torch.randn(1, 65, tiny_backbone.vision_width)
    layer = tiny_backbone.vision_layers[3]
    h = layer.layer_norm1(x)
    expected = x + layer.self_attn.out_proj(layer.self_attn.v_proj(h))  # softmax over one image is 1
    expected = expected + layer.mlp(layer.layer_norm2(expected))
    with torch.no_grad():
        got = tiny_backbone.vision_block(3, x, vv_mode="batch")
        tokens_mode = tiny_backbone.vision_block(3, x, vv_mode="tokens")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tokens_mode, expected, atol=1e-4)


def test_alone_mode_is_batch_mode_with_each_image_on_its_own(tiny_backbone):
    images = torch.randn(3, 3, 64, 64)
    alone = tiny_backbone.encode_image_vv(images, surgery_from=2, vv_mode="alone").level_tokens
    for i in range(3):
        single = tiny_backbone.encode_image_vv(images[i : i + 1], surgery_from=2, vv_mode="batch").level_tokens
        for level_alone, level_single in zip(alone, single):
            torch.testing.assert_close(level_alone[i : i + 1], level_single, atol=1e-5, rtol=1e-5)


def test_batch_mode_couples_images_and_tokens_mode_does_not(tiny_backbone):
    images = torch.randn(2, 3, 64, 64)
    other = images.clone()
    other[1] = torch.randn(3, 64, 64)
    for mode, coupled in (("batch", True), ("tokens", False)):
        first = tiny_backbone.encode_image_vv(images, surgery_from=2, vv_mode=mode).level_tokens[-1][0]
        second = tiny_backbone.encode_image_vv(other, surgery_from=2, vv_mode=mode).level_tokens[-1][0]
        assert torch.allclose(first, second, atol=1e-5) != coupled, mode


def test_vv_path_shares_the_plain_path_up_to_surgery_and_keeps_the_plain_embedding(tiny_backbone):
    images = torch.randn(2, 3, 64, 64)
    plain = tiny_backbone.encode_image(images, levels=[2, 4, 6, 8])
    vv = tiny_backbone.encode_image_vv(images, surgery_from=4, vv_mode="tokens", levels=[2, 4, 6, 8])
    torch.testing.assert_close(vv.image_embed, plain.image_embed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vv.level_tokens[0], plain.level_tokens[0])  # level 2 < surgery_from
    assert not torch.allclose(vv.level_tokens[1], plain.level_tokens[1], atol=1e-4)  # level 4 is V-V
    x = tiny_backbone.embed_image(images)  # the same, one block at a time
    with torch.no_grad():
        for index in range(8):
            x = tiny_backbone.vision_block(index, x, vv_mode="tokens" if index >= 3 else None)
    torch.testing.assert_close(vv.level_tokens[-1], x, atol=1e-5, rtol=1e-5)


def test_everything_is_frozen_and_stays_in_eval(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    parent = nn.ModuleDict({"clip": tiny_backbone, "adapter": nn.Linear(2, 2)})
    parent.train()
    assert parent["adapter"].training and not tiny_backbone.training
    assert not any(m.training for m in tiny_backbone.modules())
    out = tiny_backbone.encode_image(torch.randn(1, 3, 64, 64))
    assert out.image_embed.grad_fn is None and all(p.grad is None for p in tiny_backbone.parameters())


def test_tiny_preset_is_identical_in_every_build_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first, _ = build_tiny_clip()
    after = torch.rand(1)
    second, _ = build_tiny_clip()
    assert torch.equal(before, after)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_gelu_choice_changes_the_mlp(tiny_backbone):
    images = torch.randn(1, 3, 64, 64)
    quick = load_clip("tiny", gelu="quick").encode_image(images).image_embed
    exact = load_clip("tiny", gelu="exact").encode_image(images).image_embed
    assert not torch.allclose(quick, exact, atol=1e-6)
    with pytest.raises(BackboneError, match="gelu"):
        load_clip("tiny", gelu="relu")


def test_bf16_runs_and_tracks_fp32(tiny_backbone):
    images = torch.randn(2, 3, 64, 64)
    bf16 = load_clip("tiny", dtype=torch.bfloat16)
    out = bf16.encode_image(images).image_embed
    assert out.dtype == torch.bfloat16
    reference = tiny_backbone.encode_image(images).image_embed
    assert F.cosine_similarity(out.float(), reference, dim=-1).min() > 0.98


def test_text_is_cut_to_the_longest_prompt(tiny_backbone):
    tokenizer = tiny_backbone.tokenizer
    texts = ["a {}.", "a photo of a damaged bottle."]
    ids = tiny_backbone.tokenize(texts)
    longest = tokenizer(texts[1])["input_ids"]
    assert ids.shape[1] == len(longest) < 77  # no position past the longest prompt's EOT
    assert ids[1].tolist() == longest and ids[1, -1] == tiny_backbone.eot_token_id
    short = tokenizer(texts[0])["input_ids"]
    assert ids[0, : len(short)].tolist() == short
    assert (ids[0, len(short) :] == tokenizer.pad_token_id).all()
    # the positions after EOT never change the embedding (causal attention): padded or alone, the same
    alone = tiny_backbone.encode_text(texts[:1])
    torch.testing.assert_close(tiny_backbone.encode_text(texts)[:1], alone, atol=1e-5, rtol=1e-5)


def test_bad_sizes_and_levels_are_clear_errors(tiny_backbone):
    with pytest.raises(BackboneError, match="multiple of the patch size 8"):
        load_clip("tiny", image_size=100)
    with pytest.raises(BackboneError, match="levels"):
        load_clip("tiny", levels=[3, 9])
    with pytest.raises(BackboneError, match="built for"):
        tiny_backbone.encode_image(torch.randn(1, 3, 32, 32))
    with pytest.raises(BackboneError, match="surgery_from"):
        tiny_backbone.encode_image_vv(torch.randn(1, 3, 64, 64), surgery_from=0)
    assert isinstance(tiny_backbone, FrozenCLIP)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tiny_backbone):
    images = torch.randn(2, 3, 64, 64)
    gpu = load_clip("tiny", device="cuda").encode_image(images.cuda()).image_embed.cpu()
    torch.testing.assert_close(gpu, tiny_backbone.encode_image(images).image_embed, atol=1e-4, rtol=1e-3)
