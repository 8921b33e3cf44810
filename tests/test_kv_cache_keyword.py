"""The KV cache reaches every forward under its transformers name, or the loops refuse in one line.

transformers 5.24 renamed the forwards' cache argument from `past_key_values` to `cache`. Both
forwards take **kwargs, so `cache=` under 5.23 or earlier is swallowed: no key or value is kept
and every image token after the first ignores the prompt. The loops pick the name from the
signature and check, after the first step, that the cache was written; a forward that drops
the cache stands in for the old transformers here.
"""

from __future__ import annotations

import functools

import pytest
import torch
import transformers

from janus_data.config import JanusGenConfig
from janus_data.errors import ModelError
from janus_data.generators.fast_loop import ImageTokenLoop
from janus_data.generators.janus import JanusGenerator
from janus_data.generators.janus_loop import cfg_inputs, reference_image_loop
from janus_data.generators.sampling import SamplerParams
from janus_data.judge.decode import cache_keyword as judge_cache_keyword
from janus_data.models import CACHE_KEYWORDS, cache_keyword


class NewLayer(torch.nn.Module):
    """A decoder layer's signature from transformers 5.24 on."""

    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None, use_cache=False, **kwargs):
        return hidden_states


class OldLayer(torch.nn.Module):
    """A decoder layer's signature before transformers 5.24."""

    def forward(
        self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False, **kwargs
    ):
        return hidden_states


def test_cache_keyword_reads_either_signature():
    assert cache_keyword(NewLayer()) == "cache"
    assert cache_keyword(OldLayer()) == "past_key_values"
    assert judge_cache_keyword is cache_keyword  # the judge's RaggedBatch uses the same helper


@pytest.fixture(scope="module")
def gen(tiny_janus):
    return JanusGenerator(JanusGenConfig(model=str(tiny_janus), loop="reference"), torch.device("cpu"), torch.float32)


@pytest.fixture()
def inputs(gen):
    ids, mask = gen.encode_prompts(["a red cube", "a cat"])
    embeds, mask = cfg_inputs(gen.model, ids, mask, bos_id=gen.bos_id, boi_id=gen.boi_id, pad_id=gen.pad_id)
    return embeds, mask, torch.tensor([1, 2])


def test_installed_transformers_layers_and_model_name_the_keyword(gen):
    lm = gen.model.model.language_model
    assert cache_keyword(lm.layers[0]) in CACHE_KEYWORDS
    assert cache_keyword(lm) == cache_keyword(lm.layers[0])


def test_fast_loop_refuses_a_layer_that_drops_the_cache(gen, inputs, monkeypatch):
    loop = ImageTokenLoop(gen.model)
    layers = gen.model.model.language_model.layers
    for layer in layers:
        forward = layer.forward

        def dropping(*args, _forward=forward, **kwargs):
            kwargs.pop(loop._cache_kw)
            return _forward(*args, **kwargs)

        monkeypatch.setattr(layer, "forward", dropping)
    with pytest.raises(ModelError) as err:
        loop(*inputs, SamplerParams(), gen.num_image_tokens)
    message = str(err.value)
    assert "\n" not in message
    assert f"{len(layers)} decoder layer(s) did not write the KV cache" in message
    assert f"transformers {transformers.__version__}" in message


def test_reference_loop_refuses_a_model_that_drops_the_cache(gen, inputs, monkeypatch):
    lm = gen.model.model.language_model
    forward, keyword = lm.forward, cache_keyword(lm)

    @functools.wraps(forward)  # the signature still names the cache: the loop passes it, the forward drops it
    def dropping(*args, **kwargs):
        kwargs.pop(keyword)
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm, "forward", dropping)
    with pytest.raises(ModelError, match="the language model did not write the KV cache") as err:
        reference_image_loop(gen.model, *inputs, SamplerParams(), gen.num_image_tokens)
    assert "\n" not in str(err.value)
