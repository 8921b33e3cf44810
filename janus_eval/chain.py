"""The trained chain at inference (docs/generate.md): draw, judge your own image, redraw while unhappy.

One chain per (prompt, sample), on the chain's seed:

- round 0: the Task-I prefix and its unconditional twin through the image loop (CFG);
- with `introspect`, every image is then evaluated by the model itself: the Task-II prefix with
  the image read through the understanding path, the answer word chosen between the first
  tokens of "Yes" and "No", then a reason until <EOS> or `reason_tokens` (greedy at text
  temperature 0, else sampled on the chain's seed);
- on "No", and while fewer than `rounds` regenerations were drawn: the Task-III prefix, whose
  image-1 context is the RE-ENCODED latest image (VQ(decode(codes)), the codes of the picture
  the model just judged, as GRPO's `regen_context: reencoded` and SFT's Task III see it) and
  whose evaluation is the model's own, closed by <EOS>; the new image is evaluated in turn.

The steps are GRPO's (`janus_train.rollout.ChainSteps`), on the same counter streams: the image of
round r draws from stage 2r + 1 of the seed, its evaluation from stage 2r + 2. So round 0 and 1
of a sampled chain are exactly a GRPO rollout on that seed, and a chain never depends on its batch:
images are VQ-decoded and re-encoded one at a time, because the VQ convolutions round differently
with the batch size (a few pixels off by one on CPU, enough to change a re-encoded code). On a
GPU, kernels may still differ in the last bits between batch shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from PIL import Image

from janus_data.config import JanusRunConfig
from janus_data.generators.fast_loop import loop_from_config
from janus_data.generators.janus_loop import reference_image_loop
from janus_data.generators.sampling import SamplerParams
from janus_data.models import loading, resolve_device, resolve_dtype, resolve_model
from janus_train.rollout import ChainSteps, RolloutParams
from janus_train.sequences import SequenceBuilder


def image_stage(round_: int) -> int:
    """The seed's counter stream of round `round_`'s image (GRPO: image 1 is 1, image 2 is 3)."""
    return 2 * round_ + 1


def evaluation_stage(round_: int) -> int:
    """The seed's counter stream of round `round_`'s evaluation (GRPO: 2)."""
    return 2 * round_ + 2


@dataclass
class ChainImage:
    """One image of a chain. round: 0 = the first draw, k = the k-th regeneration.

    codes (N,): the sampled image tokens; pixels (H, W, 3) uint8: their decode; context (N,): the
    image-1 codes the regeneration prefix was built with (None in round 0); answer ("Yes"/"No"),
    reason (the model's evaluation text, answer word first, <EOS> dropped) and evaluation (its
    token ids) judge THIS image (None without introspection)."""

    round: int
    codes: np.ndarray
    pixels: np.ndarray
    context: np.ndarray | None = None
    answer: str | None = None
    reason: str | None = None
    evaluation: list[int] | None = None


class IntrospectiveChain:
    """Runs batches of chains with `ChainSteps`: B prompts and seeds -> B lists of ChainImage."""

    def __init__(self, steps: ChainSteps, introspect: bool, rounds: int):
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        self.steps = steps
        self.introspect = introspect
        self.rounds = rounds

    @torch.no_grad()
    def run(self, prompts: list[str], seeds: list[int], sources: np.ndarray | None = None) -> list[list[ChainImage]]:
        """B chains. With `sources` ((B, N) source codes) the prompts are instructions and the chain is
        an edit chain: edit prefixes, the edit self-evaluation, edit regenerations (as GRPO's edit steps)."""
        steps = self.steps
        chains: list[list[ChainImage]] = [[] for _ in prompts]
        rows = list(range(len(prompts)))  # the chains drawing in this round
        tokens, _ = steps.images(steps.t2i_prefixes(prompts, sources), seeds, image_stage(0), want_logprobs=False)
        context: torch.Tensor | None = None
        for round_ in range(self.rounds + 1):
            pixels = np.concatenate([steps.decode(tokens[j : j + 1]) for j in range(len(rows))])
            codes = tokens.cpu().numpy()
            for j, i in enumerate(rows):
                ctx = None if context is None else context[j].cpu().numpy()
                chains[i].append(ChainImage(round_, codes[j], pixels[j], ctx))
            if not self.introspect:
                break
            texts, chain_seeds = [prompts[i] for i in rows], [seeds[i] for i in rows]
            row_sources = None if sources is None else np.asarray(sources)[rows]
            pil = [Image.fromarray(a) for a in pixels]
            ids, _, said_yes = steps.evaluate(texts, pil, chain_seeds, evaluation_stage(round_), row_sources)
            for j, i in enumerate(rows):
                image = chains[i][-1]
                image.answer, image.evaluation = ("Yes" if said_yes[j] else "No"), ids[j]
                image.reason = self.reason_text(ids[j])
            redo = [j for j in range(len(rows)) if not said_yes[j]]
            if not redo or round_ == self.rounds:
                break
            context = torch.cat([steps.context(tokens[j : j + 1], pixels[j : j + 1]) for j in redo])
            redo_sources = None if row_sources is None else row_sources[redo]
            prefixes = steps.regen_prefixes([texts[j] for j in redo], context, [ids[j] for j in redo], redo_sources)
            rows = [rows[j] for j in redo]
            tokens, _ = steps.images(prefixes, [seeds[i] for i in rows], image_stage(round_ + 1), want_logprobs=False)
        return chains

    def reason_text(self, ids: list[int]) -> str:
        """The evaluation as text: its tokens without <EOS>, special tokens dropped."""
        eos = self.steps.builder.eos_id
        text = self.steps.builder.tokenizer.decode([t for t in ids if t != eos], skip_special_tokens=True)
        return " ".join(text.split())


def chain_params(cfg: JanusRunConfig) -> RolloutParams:
    """Image sampling from `synth.janus` (as synth draws), the evaluation from `eval`; re-encoded context."""
    j = cfg.synth.janus
    image = SamplerParams(j.cfg_weight, j.temperature, j.top_k, j.top_p)
    return RolloutParams(image, cfg.eval.text_temperature, cfg.eval.reason_tokens, "reencoded")


def load_chain_steps(path: str, cfg: JanusRunConfig) -> ChainSteps:
    """Load a Janus-Pro checkpoint (`EvalCheckpoint.path`) with its tokenizer and image processor on
    the configured device and dtype, into the chain's steps with the configured image loop."""
    from transformers import AutoImageProcessor

    from janus_data.generators.janus import load_janus

    device = resolve_device(cfg.runtime)
    dtype = resolve_dtype(cfg.runtime, device)
    trust = cfg.runtime.trust_remote_code
    model, tokenizer = load_janus(path, device, dtype, trust)
    with loading("Janus-Pro", path, "the checkpoint directory needs its preprocessor_config.json"):
        image_processor = AutoImageProcessor.from_pretrained(resolve_model(path), trust_remote_code=trust)
    config = model.config
    builder = SequenceBuilder(
        tokenizer, int(config.vision_config.num_image_tokens), int(config.vq_config.num_patches) ** 2
    )
    j = cfg.synth.janus
    loop = loop_from_config(model, j) if j.loop == "fast" else partial(reference_image_loop, model)
    return ChainSteps(model, builder, image_processor, chain_params(cfg), loop)
