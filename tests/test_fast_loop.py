"""The fast image-token loop emits exactly the reference loop's tokens for the same seeds."""

from __future__ import annotations

import pytest
import torch
from transformers import JanusForConditionalGeneration

from janus_data.arch import janus_pro_config
from janus_data.config import JanusGenConfig
from janus_data.generators.fast_loop import ImageTokenLoop, StaticKV
from janus_data.generators.fused_checks import forced_logits, relative_error
from janus_data.generators.fused_decoder import UnsupportedLayers
from janus_data.generators.janus import JanusGenerator
from janus_data.generators.janus_loop import cfg_inputs, reference_image_loop
from janus_data.generators.sampling import SamplerParams

PROMPTS = [
    "a red cube",
    "two birds on the left of a very large green apple tree at sunset",
    "a cat",
    "a photo of a bench",
    "three blue cups and a fork",
]
SETTINGS = [
    SamplerParams(),
    SamplerParams(temperature=0.0),
    SamplerParams(cfg_weight=3.0, temperature=0.8, top_k=50, top_p=0.9),
    SamplerParams(cfg_weight=1.0, temperature=1.3, top_p=0.7),
]


@pytest.fixture(scope="module")
def gen(tiny_janus):
    return JanusGenerator(JanusGenConfig(model=str(tiny_janus), loop="reference"), torch.device("cpu"), torch.float32)


def inputs(gen, prompts):
    ids, mask = gen.encode_prompts(prompts)
    return cfg_inputs(gen.model, ids, mask, bos_id=gen.bos_id, boi_id=gen.boi_id, pad_id=gen.pad_id)


@pytest.mark.parametrize("params", SETTINGS, ids=["t1", "greedy", "topk-topp", "topp"])
@pytest.mark.parametrize("batch", [1, 5])
def test_fast_loop_tokens_equal_reference_loop(gen, params, batch):
    embeds, mask = inputs(gen, PROMPTS[:batch])
    seeds = torch.arange(batch, dtype=torch.int64) * 1009 + (1 << 35)
    ref, ref_lp = reference_image_loop(gen.model, embeds, mask, seeds, params, gen.num_image_tokens, True)
    fast, fast_lp = ImageTokenLoop(gen.model)(embeds, mask, seeds, params, gen.num_image_tokens, True)
    assert torch.equal(fast, ref)
    torch.testing.assert_close(fast_lp, ref_lp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("pad_multiple", "window_multiple"), [(8, 64), (64, 64), (1, 1), (3, 4)])
def test_padding_buckets_and_attention_windows_change_nothing(gen, pad_multiple, window_multiple):
    """Left-padding prompts up to a bucket (one CUDA graph serves many batches) and attending over
    windows of the cache (a step pays for the context it has) give the same tokens."""
    embeds, mask = inputs(gen, PROMPTS)
    seeds = torch.arange(5, dtype=torch.int64)
    ref, _ = reference_image_loop(gen.model, embeds, mask, seeds, SamplerParams(), gen.num_image_tokens)
    loop = ImageTokenLoop(gen.model, pad_multiple=pad_multiple, window_multiple=window_multiple)
    fast, lp = loop(embeds, mask, seeds, SamplerParams(), gen.num_image_tokens)
    assert torch.equal(fast, ref) and lp is None


def test_buffers_are_reused_across_calls_and_results_do_not_alias(gen):
    loop = ImageTokenLoop(gen.model, pad_multiple=64)
    first, _ = loop(*inputs(gen, PROMPTS[:2]), torch.tensor([1, 2]), SamplerParams(), gen.num_image_tokens)
    (buf,) = loop._buffers.values()
    # Other prompts of the same batch size land in the same length bucket: same buffers.
    second, _ = loop(*inputs(gen, PROMPTS[2:4]), torch.tensor([3, 4]), SamplerParams(), gen.num_image_tokens)
    assert list(loop._buffers.values()) == [buf]
    again, _ = loop(*inputs(gen, PROMPTS[:2]), torch.tensor([1, 2]), SamplerParams(), gen.num_image_tokens)
    assert torch.equal(again, first) and not torch.equal(second, first)


def test_eager_attention_matches_too(tiny_janus):
    model = JanusForConditionalGeneration.from_pretrained(tiny_janus, attn_implementation="eager").eval()
    eager = JanusGenerator(JanusGenConfig(model=str(tiny_janus)), torch.device("cpu"), torch.float32)
    eager.model = model
    embeds, mask = inputs(eager, PROMPTS[:3])
    seeds = torch.tensor([7, 8, 9])
    ref, _ = reference_image_loop(model, embeds, mask, seeds, SamplerParams(), eager.num_image_tokens)
    fast, _ = ImageTokenLoop(model)(embeds, mask, seeds, SamplerParams(), eager.num_image_tokens)
    assert torch.equal(fast, ref)


def test_generator_uses_the_fast_loop_by_default_with_the_same_tokens(gen, tiny_janus):
    fast = JanusGenerator(
        JanusGenConfig(model=str(tiny_janus)), torch.device("cpu"), torch.float32, loaded=(gen.model, gen.tokenizer)
    )
    assert isinstance(fast.loop, ImageTokenLoop) and gen.loop is None
    a, _ = fast.generate_tokens(PROMPTS, [11, 12, 13, 14, 15])
    b, _ = gen.generate_tokens(PROMPTS, [11, 12, 13, 14, 15])
    assert torch.equal(a, b)


def test_bad_shapes_are_refused(gen):
    embeds, mask = inputs(gen, PROMPTS[:2])
    with pytest.raises(ValueError, match=r"\(2B, L, D\) embeds"):
        ImageTokenLoop(gen.model)(embeds[:3], mask[:3], torch.tensor([1]), SamplerParams(), 4)
    with pytest.raises(ValueError, match=r"\(B,\) seeds"):
        ImageTokenLoop(gen.model)(embeds, mask, torch.tensor([1, 2, 3]), SamplerParams(), 4)


def test_static_kv_writes_at_the_device_slot():
    kv = StaticKV(num_layers=2, rows=2, kv_heads=1, slots=5, head_dim=3, device="cpu")
    k = torch.ones(2, 1, 2, 3)
    keys, _ = kv.update(k, 2 * k, layer_idx=1)
    kv.advance(2)
    keys, values = kv.update(3 * k[:, :, :1], 4 * k[:, :, :1], layer_idx=1)
    assert keys[0, 0, :, 0].tolist() == [1, 1, 3, 0, 0]
    assert values[0, 0, :, 0].tolist() == [2, 2, 4, 0, 0]
    assert kv.keys[0].abs().sum() == 0  # layer 0 untouched


# The fused decoder (one QKV and one gate/up GEMM per layer, the mask once per step, residual +
# RMSNorm together) is the default on CUDA; on CPU it runs when asked for, and must give the same tokens.


@pytest.mark.parametrize("params", SETTINGS, ids=["t1", "greedy", "topk-topp", "topp"])
@pytest.mark.parametrize("batch", [1, 5])
def test_fused_decoder_tokens_equal_reference_loop(gen, params, batch):
    embeds, mask = inputs(gen, PROMPTS[:batch])
    seeds = torch.arange(batch, dtype=torch.int64) * 1009 + (1 << 35)
    ref, ref_lp = reference_image_loop(gen.model, embeds, mask, seeds, params, gen.num_image_tokens, True)
    loop = ImageTokenLoop(gen.model, fused=True)
    fast, fast_lp = loop(embeds, mask, seeds, params, gen.num_image_tokens, True)
    assert loop.decoder is not None
    assert torch.equal(fast, ref)
    torch.testing.assert_close(fast_lp, ref_lp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("pad_multiple", "window_multiple"), [(64, 32), (3, 4)])
def test_fused_decoder_with_padding_buckets_and_windows(gen, pad_multiple, window_multiple):
    embeds, mask = inputs(gen, PROMPTS)
    seeds = torch.arange(5, dtype=torch.int64)
    ref, _ = reference_image_loop(gen.model, embeds, mask, seeds, SamplerParams(), gen.num_image_tokens)
    loop = ImageTokenLoop(gen.model, fused=True, pad_multiple=pad_multiple, window_multiple=window_multiple)
    assert torch.equal(loop(embeds, mask, seeds, SamplerParams(), gen.num_image_tokens)[0], ref)


def test_fused_decoder_matches_an_eager_attention_model(tiny_janus):
    model = JanusForConditionalGeneration.from_pretrained(tiny_janus, attn_implementation="eager").eval()
    eager = JanusGenerator(JanusGenConfig(model=str(tiny_janus)), torch.device("cpu"), torch.float32)
    embeds, mask = inputs(eager, PROMPTS[:3])
    seeds = torch.tensor([7, 8, 9])
    ref, _ = reference_image_loop(model, embeds, mask, seeds, SamplerParams(), eager.num_image_tokens)
    fast, _ = ImageTokenLoop(model, fused=True)(embeds, mask, seeds, SamplerParams(), eager.num_image_tokens)
    assert torch.equal(fast, ref)


def test_fused_weights_follow_in_place_updates(gen, tiny_janus):
    """GRPO updates the policy (or copies it into the rollout copy) in place between rollouts: the fused
    copies must follow, in place, so that captured graphs stay valid."""
    model = JanusForConditionalGeneration.from_pretrained(tiny_janus).eval()
    other = JanusForConditionalGeneration.from_pretrained(tiny_janus)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    embeds, mask = inputs(gen, PROMPTS[:2])
    seeds, n = torch.tensor([1, 2]), gen.num_image_tokens
    loop = ImageTokenLoop(model, fused=True)
    before, _ = loop(embeds, mask, seeds, SamplerParams(), n)
    qkv = loop.decoder.weights[0].qkv
    model.load_state_dict(other.state_dict())  # copies in place, as GRPO's sync_actor does
    after, _ = loop(embeds, mask, seeds, SamplerParams(), n)
    assert loop.decoder.weights[0].qkv is qkv  # refreshed in place
    assert torch.equal(after, reference_image_loop(model, embeds, mask, seeds, SamplerParams(), n)[0])
    assert not torch.equal(after, before)


def test_fused_decoder_refuses_layers_it_does_not_reproduce(gen, monkeypatch):
    monkeypatch.setattr("janus_data.generators.fused_decoder.SUPPORTED_LAYERS", ("SomeOtherLayer",))
    with pytest.raises(UnsupportedLayers, match="LlamaDecoderLayer"):
        ImageTokenLoop(gen.model, fused=True)
    assert ImageTokenLoop(gen.model).decoder is None  # the default falls back to transformers' layers
    with pytest.raises(ValueError, match="compile=True"):
        ImageTokenLoop(gen.model, fused=False, compile=True)


def test_fused_decoder_refuses_hooked_or_wrapped_projections(gen):
    """An adapter or a hook changes what a layer computes; fused weights would silently leave it out."""
    mlp = gen.model.model.language_model.layers[1].mlp
    handle = mlp.up_proj.register_forward_hook(lambda module, args, out: out)
    try:
        with pytest.raises(UnsupportedLayers, match="layer 1 has forward hooks"):
            ImageTokenLoop(gen.model, fused=True)
    finally:
        handle.remove()
    plain = mlp.down_proj
    mlp.down_proj = torch.nn.Sequential(plain)
    try:
        with pytest.raises(UnsupportedLayers, match="not plain Linear layers"):
            ImageTokenLoop(gen.model, fused=True)
    finally:
        mlp.down_proj = plain


@pytest.fixture(scope="module")
def janus_1b_layer():
    """Janus-Pro-1B's language-model shapes (hidden 2048, MLP 5632, 16 heads) with one decoder layer,
    random fp32 weights. The vision tower (unused by the loop) keeps one layer, the text vocabulary 512."""
    cfg = janus_pro_config("1b", vocab_size=512, image_token_id=5, num_layers=1)
    cfg.vision_config.num_hidden_layers = 1
    torch.manual_seed(0)
    return JanusForConditionalGeneration(cfg).eval()


def test_fused_decoder_on_janus_pro_1b_layer_shapes(janus_1b_layer):
    """Same tokens as the reference loop, and the logits of every teacher-forced step within 1e-5
    (relative L2) of transformers' layers (measured: 0.0 in fp32 on CPU, the same float operations)."""
    model, batch, length, n = janus_1b_layer, 2, 12, 24
    torch.manual_seed(1)
    embeds = torch.randn(2 * batch, length, model.config.text_config.hidden_size)
    mask = torch.ones(2 * batch, length, dtype=torch.long)
    mask[[0, batch], :3] = 0  # a shorter prompt, left-padded, in both of its CFG rows
    seeds, params = torch.tensor([3, 4]), SamplerParams()
    ref, _ = reference_image_loop(model, embeds, mask, seeds, params, n)
    fused, _ = ImageTokenLoop(model, fused=True)(embeds, mask, seeds, params, n)
    assert torch.equal(fused, ref)
    a = forced_logits(ImageTokenLoop, model, embeds, mask, ref, params, fused=True)
    b = forced_logits(ImageTokenLoop, model, embeds, mask, ref, params, fused=False)
    assert relative_error(a, b) <= 1e-5


@pytest.mark.slow
def test_compiled_fused_decoder_tokens_equal_reference_loop(gen):
    """The regional torch.compile (Inductor's C++ backend here; ~40 s to compile on 2 cores)."""
    embeds, mask = inputs(gen, PROMPTS[:3])
    seeds = torch.tensor([5, 6, 7])
    ref, _ = reference_image_loop(gen.model, embeds, mask, seeds, SamplerParams(), gen.num_image_tokens)
    loop = ImageTokenLoop(gen.model, fused=True, compile=True)
    assert torch.equal(loop(embeds, mask, seeds, SamplerParams(), gen.num_image_tokens)[0], ref)


# Run in a child process: conftest puts Triton in interpreter mode for the CPU tests, and the
# fused sampler must be compiled to run inside a captured CUDA graph.
CUDA_GRAPH_CHECK = """
import sys, torch
from janus_data.config import JanusGenConfig
from janus_data.generators.fast_loop import ImageTokenLoop
from janus_data.generators.janus import JanusGenerator
from janus_data.generators.janus_loop import cfg_inputs
from janus_data.generators.sampling import SamplerParams
path, prompts = sys.argv[1], sys.argv[2:]
gen = JanusGenerator(JanusGenConfig(model=path, loop="reference"), torch.device("cuda"), torch.float32)
ids, mask = gen.encode_prompts(prompts)
embeds, mask = cfg_inputs(gen.model, ids, mask, bos_id=gen.bos_id, boi_id=gen.boi_id, pad_id=gen.pad_id)
seeds = torch.arange(len(prompts), dtype=torch.int64) * 1009  # on the host, as JanusGenerator passes them
graphed = ImageTokenLoop(gen.model, cuda_graph=True, pad_multiple=64)
eager = ImageTokenLoop(gen.model, cuda_graph=False, pad_multiple=64)
for params in (SamplerParams(), SamplerParams(cfg_weight=3.0, temperature=0.8, top_k=50, top_p=0.9)):
    a, a_lp = graphed(embeds, mask, seeds, params, gen.num_image_tokens, True)  # captures the step
    b, b_lp = eager(embeds, mask, seeds, params, gen.num_image_tokens, True)
    c, _ = graphed(embeds, mask, seeds, params, gen.num_image_tokens, True)  # replays it
    assert graphed.use_graph and not eager.use_graph
    assert torch.equal(a, b) and torch.equal(a, c), params
    torch.testing.assert_close(a_lp, b_lp, rtol=1e-5, atol=1e-5)
print("ok")
"""


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_graph_loop_equals_the_eager_loop_on_cuda(tiny_janus):
    """The captured decode step (compiled sampler, CUDA graph, replayed) draws the eager loop's tokens."""
    import os
    import subprocess
    import sys

    from procs import HANG_S, REPO

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, "-c", CUDA_GRAPH_CHECK, str(tiny_janus), *PROMPTS]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S, env=env, cwd=REPO)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
