"""A tiny InternVL (the judge) built from InternVLConfig: Qwen2 text model, InternViT vision tower.

Keeps what the judge path depends on from OpenGVLab/InternVL3-*-hf: 448 px tiles of 14 px
patches, pixel-shuffled to 256 <IMG_CONTEXT> tokens per tile; dynamic tiling plus a thumbnail by
GotOcr2's image processor (its PIL backend runs without torchvision); a Qwen2Tokenizer with
InternVL's special tokens and the chatml chat template of the transformers conversion; and the
processor_config.json naming InternVLProcessor.

Note: with transformers 5.x and no torchvision, AutoProcessor cannot load any InternVL checkpoint
(real or tiny): InternVLProcessor always loads a video processor, and video processors need
torchvision. AutoTokenizer and AutoImageProcessor load fine, and the InternVLProcessor prompt
expansion is one string replacement (see tests/test_tiny_models.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import (
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    Qwen2Config,
    Qwen2Tokenizer,
)

from janus_data.judge.scoring import NO_WORDS, YES_WORDS
from janus_data.tiny.tokenizer import BASE_CORPUS, train_tokenizer

# InternVL's special tokens (Qwen2 LLM variants), spelled exactly.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
START_IMAGE = "<img>"
END_IMAGE = "</img>"
IMAGE_CONTEXT = "<IMG_CONTEXT>"
VIDEO = "<video>"
SPECIAL_TOKENS = [
    ENDOFTEXT,
    IM_START,
    IM_END,
    START_IMAGE,
    END_IMAGE,
    IMAGE_CONTEXT,
    VIDEO,
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
]
# The judge reads these as whole tokens, with and without a leading space.
YES_NO = (*YES_WORDS, *NO_WORDS)

IMAGE_SIZE = 448
PATCH_SIZE = 14
DOWNSAMPLE_RATIO = 0.5
IMAGE_SEQ_LENGTH = int((IMAGE_SIZE // PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO**2)  # 256, as the real model
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Wider than the usual 0.02 so random logits are far from uniform and greedy decoding varies.
INIT_STD = 0.2
# The answer channel: its value in every embedding (large, so it survives the final norm at about 3)
# and the LM-head weight that reads it for the yes/no ids only.
ANSWER_CHANNEL = 20.0
ANSWER_LIFT = 5.0
# Weight of the direction shared by the yes rows (and, negated, the no rows).
ANSWER_SPREAD = 1.0

# transformers' InternVL chat template (convert_internvl_weights_to_hf.py), images as <IMG_CONTEXT>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def _train_qwen2_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE trained offline, wrapped in transformers' Qwen2Tokenizer."""
    yes_no = "\n".join(YES_NO) + "\n " + " ".join(YES_NO)
    corpus = [*BASE_CORPUS, *([yes_no] * 8)]  # frequent enough that each answer word merges whole
    fast = train_tokenizer(SPECIAL_TOKENS, corpus=corpus, vocab_size=512, eos_token=IM_END, pad_token=ENDOFTEXT)
    bpe = json.loads(fast.backend_tokenizer.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(m) for m in bpe["merges"]],
        unk_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens={
            "start_image_token": START_IMAGE,
            "end_image_token": END_IMAGE,
            "context_image_token": IMAGE_CONTEXT,
            "video_token": VIDEO,
        },
        model_max_length=8192,
    )
    # Register every control token (chatml included) so text never splits it.
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    for word in YES_NO:
        for text in (word, f" {word}"):
            if len(tokenizer(text).input_ids) != 1:
                raise RuntimeError(f"tiny InternVL tokenizer splits {text!r}; grow its corpus")
    return tokenizer


@torch.no_grad()
def wire_answer_channel(model: InternVLForConditionalGeneration, yes_ids: list[int], no_ids: list[int]) -> None:
    """Make the random model answer like a judge: every yes/no spelling tops the first-token list.

    Hidden channel 0 is set to one large constant in every token embedding and no layer writes it
    (row 0 of each attention output and MLP down projection is zero), so after the final norm
    it is positive at every position. The LM head reads that channel only for the yes/no ids,
    lifting them well above the rest, so a server's top-20 log-probabilities always hold all
    twelve spellings and S over HTTP can equal S from the full softmax. The yes rows also share
    one random direction and the no rows its opposite, so S, which depends on the image and the
    prompt, spreads over most of [0, 1] instead of clustering at 0.5.
    """
    lm = model.model.language_model
    lm.embed_tokens.weight[:, 0] = ANSWER_CHANNEL
    for layer in lm.layers:
        layer.self_attn.o_proj.weight[0] = 0.0
        layer.mlp.down_proj.weight[0] = 0.0
    head = model.lm_head.weight
    head[:, 0] = 0.0
    head[yes_ids + no_ids, 0] = ANSWER_LIFT
    direction = torch.randn(head.shape[1] - 1) * INIT_STD
    head[yes_ids, 1:] += ANSWER_SPREAD * direction
    head[no_ids, 1:] -= ANSWER_SPREAD * direction


def build_tiny_internvl(out_dir: str | Path, seed: int = 0) -> Path:
    """Build, save (safetensors) and return the directory of a tiny random InternVL."""
    out_dir = Path(out_dir)
    tokenizer = _train_qwen2_tokenizer()
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=INIT_STD,
    )
    vision = InternVLVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
        patch_size=[PATCH_SIZE, PATCH_SIZE],
        initializer_range=INIT_STD,
    )
    config = InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=IMAGE_SEQ_LENGTH,
        downsample_ratio=DOWNSAMPLE_RATIO,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    yes_ids, no_ids = (
        [
            tokenizer.convert_tokens_to_ids(t)
            for w in words
            for t in (*tokenizer.tokenize(w), *tokenizer.tokenize(f" {w}"))
        ]
        for words in (YES_WORDS, NO_WORDS)
    )
    wire_answer_channel(model, yes_ids, no_ids)
    gen = model.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen._from_model_config = False
    model.save_pretrained(out_dir, safe_serialization=True)

    tokenizer.save_pretrained(out_dir)  # also writes chat_template.jinja
    GotOcr2ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=12,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    ).save_pretrained(out_dir)  # records image_processor_type GotOcr2ImageProcessor, as the real one
    # InternVLProcessor cannot be instantiated without torchvision (its video_processor slot is
    # checked against VideoProcessorMixin, which transformers only exports with torchvision), so
    # write the processor config a real InternVL-hf checkpoint carries by hand.
    processor_config = {"image_seq_length": IMAGE_SEQ_LENGTH, "processor_class": "InternVLProcessor"}
    (out_dir / "processor_config.json").write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n")
    return out_dir
