"""Introspective rollouts for GRPO (docs/paper.md, 'GRPO'): draw, judge yourself, redraw if unhappy.

One rollout of a prompt, in the released code's sequence formats (`sequences.py`):

1. image 1: the Task-I prefix `<BOS>turn<begin_of_image>` and its unconditional twin (the
   turn padded) through the fast image loop with CFG -> N codes and their behaviour log-probs;
2. self-evaluation: the Task-II prefix, image 1 decoded and read through the UNDERSTANDING
   path, then `<end_of_image>\\nLet me think Does this image match the prompt...`. The first
   answer token is forced to Yes or No: it is sampled from the softmax over those two words'
   first tokens only. If the word has more tokens (a tokenizer that splits "No"), they follow
   as forced context, outside the judgement segment. Then a free reason at the text
   temperature, without CFG, until <EOS> or `reason_tokens`;
3. image 2, only if the answer was No: the Task-III prefix (image 1 through the GENERATION
   path, the evaluation, <EOS>, `\\nNext, I will draw a new image<begin_of_image>`) and its
   unconditional twin (the first turn padded, as in SFT), through the same image loop. Image 1
   there is `regen_context`: 'reencoded' = VQ(decode(codes)), the codes of the image it shows,
   as the released code (janus-rl/src/open_r1/llama.py:138-144, :238-252), SFT's Task III and
   inference see it, quantized by the policy's own VQ (`janus_data.vq.VQEncoder.from_module`);
   'sampled' = the sampled codes themselves. `Rollouts.context1` keeps them for the update.

The steps themselves are `ChainSteps`, which `janus generate --introspect` (janus_eval.chain) runs
too, greedily at text temperature 0 and for more than one regeneration.

Every random draw is counter-based on a per-rollout seed, so a rollout depends only on its
seed and the weights, never on its batch. Behaviour log-probs are those of the distributions
sampled from: CFG logits after top-k / temperature / top-p for image tokens (`sampling.py`), the
two-word softmax for the answer, softmax(logits / T) for the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from janus_data.generators.fast_loop import ImageTokenLoop
from janus_data.generators.janus_loop import decode_image_tokens
from janus_data.generators.sampling import SamplerParams, counter_uniform
from janus_data.models import cache_keyword, cache_not_written
from janus_data.vq import VQEncoder
from janus_train.losses import batch_embeds, collate
from janus_train.sequences import SequenceBuilder

IGNORED = float("nan")  # behaviour log-prob of a forced token (not part of any segment)


@dataclass(frozen=True)
class RolloutParams:
    image: SamplerParams
    """Image-token sampling: CFG weight, temperature, top-k, top-p."""
    text_temperature: float = 1.0
    """Temperature of the Yes/No answer and the reason (no CFG)."""
    reason_tokens: int = 64
    """Most tokens of the evaluation after the answer word, <EOS> included (the reason is cut there)."""
    regen_context: Literal["reencoded", "sampled"] = "reencoded"
    """Image 1 in the regeneration prefix: VQ(decode(codes)) or the sampled codes."""


@dataclass
class Rollouts:
    """B rollouts (row i: prompts[i], seeds[i]). Image tensors are (B, N); image 2 rows where the
    model said Yes hold zeros and are never read. judge_ids[i] are the evaluation's tokens (answer
    word, reason, <EOS> if reached); judge_logp[i] their behaviour log-probs, NaN on forced tokens.
    context1 (B, N): the image-1 codes the regeneration prefix conditioned on (zeros on Yes rows)."""

    prompts: list[str]
    seeds: list[int]
    image1: torch.Tensor
    image1_logp: torch.Tensor
    said_yes: torch.Tensor
    judge_ids: list[list[int]]
    judge_logp: list[list[float]]
    image2: torch.Tensor
    image2_logp: torch.Tensor
    pixels1: np.ndarray
    pixels2: np.ndarray  # (B, H, W, 3); rows that said Yes are zeros
    context1: torch.Tensor
    edit_scores: dict[str, torch.Tensor] | None = None
    """Edit rollouts, once judged (`GRPOStep.score`): S_flw and S_psv of image 1 and the final image."""
    sources: np.ndarray | None = None
    """Edit rollouts: (B, N) codes of each row's source image (prompts are then instructions); None: text-to-image."""
    source_pixels: np.ndarray | None = None
    """Edit rollouts: (B, H, W, 3) the source images as the policy's VQ sees them (the judge's originals)."""

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def is_edit(self) -> bool:
        return self.sources is not None

    def source(self, row: int) -> np.ndarray | None:
        """Row `row`'s source codes (edit rollouts), else None: the `source` of the SequenceBuilder calls."""
        return source_row(self.sources, row)

    @property
    def regenerated(self) -> list[int]:
        return [i for i, yes in enumerate(self.said_yes.tolist()) if not yes]


def answer_words(builder: SequenceBuilder) -> tuple[list[int], list[int]]:
    """Token ids of "Yes" and "No" as the evaluation starts them; their first tokens must differ."""
    yes, no = builder._encode("Yes"), builder._encode("No")
    if not yes or not no or yes[0] == no[0]:
        raise ValueError("the tokenizer cannot tell Yes from No by the first token; the forced answer needs that")
    return yes, no


def closed(ids: list[int], eos: int) -> list[int]:
    """An evaluation as the regeneration context holds it: always ended by <EOS> (a reason cut at
    the length bound gets one)."""
    return ids if ids and ids[-1] == eos else [*ids, eos]


def source_row(sources, row: int) -> np.ndarray | None:
    """Row `row` of (B, N) source codes (numpy or torch), or None for text-to-image chains."""
    if sources is None:
        return None
    value = sources[row]
    return value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def stage_seeds(seeds: list[int], stage: int) -> torch.Tensor:
    """Independent counter streams per rollout stage (1: image 1, 2: evaluation, 3: image 2)."""
    mask = (1 << 63) - 1
    return torch.tensor([(s * 0x9E3779B97F4A7C15 + stage * 0xBF58476D1CE4E5B9) & mask for s in seeds])


class ChainSteps:
    """The steps of the introspective chain with one Janus model, shared by GRPO's rollouts and
    `janus generate --introspect` (janus_eval.chain): the CFG prefixes of Tasks I and III, image
    tokens drawn for them, their decode, the regeneration context, and the model's own evaluation.

    `stage` numbers a counter stream of the row's seed (`stage_seeds`), so every draw depends only
    on its row's seed and stage, never on the batch. A text temperature of 0 evaluates greedily.
    """

    def __init__(
        self,
        model,
        builder: SequenceBuilder,
        image_processor,
        params: RolloutParams,
        loop: ImageTokenLoop | None = None,
    ):
        if params.text_temperature < 0:
            raise ValueError("the text temperature must be >= 0 (0 = greedy)")
        self.model = model
        self.builder = builder
        self.image_processor = image_processor
        self.params = params
        self.loop = loop or ImageTokenLoop(model)
        self.device = next(model.parameters()).device
        self.num_image_tokens = int(model.config.vq_config.num_patches) ** 2
        self.yes_ids, self.no_ids = answer_words(builder)
        # The policy's own VQ, shared: the rollout copy (bf16 on CUDA) encodes with its weights.
        self.vq = VQEncoder.from_module(model.model.vqmodel, model.config.vq_config, model_id="policy")

    def t2i_prefixes(self, prompts: list[str], sources=None) -> list:
        """Task-I prefixes: B conditional, then their B unconditional twins (the turn padded). With
        `sources` ((B, N) source codes) the prompts are instructions: edit prefixes, the instruction padded."""
        b = self.builder
        return [b.t2i(p, drop=d, source=source_row(sources, i)) for d in (False, True) for i, p in enumerate(prompts)]

    def regen_prefixes(
        self, prompts: list[str], contexts: torch.Tensor, evaluations: list[list[int]], sources=None
    ) -> list:
        """Task-III prefixes for R rows: (R, N) image-1 codes and each row's evaluation ids (closed by
        <EOS> here) -> R conditional, then R unconditional twins (the first turn padded, as in SFT).
        `sources`: the rows' source codes for edit chains (edit_regen prefixes)."""
        eos = self.builder.eos_id
        return [
            self.builder.regen(
                p, contexts[i].cpu().numpy(), closed(evaluations[i], eos), drop=d, source=source_row(sources, i)
            )
            for d in (False, True)
            for i, p in enumerate(prompts)
        ]

    def prepare_sources(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Edit sources as the policy sees them: each centre-cropped to its image size (as JanusEditor
        shapes a source) -> ((B, N) codes of its own VQ, (B, H, W, 3) uint8 pixels of the crops)."""
        from janus_data.generators.janus_edit import center_crop

        unique = {id(im): im for im in images}  # a group's rows share one image object: encoded once
        crops = {key: center_crop(im, self.vq.image_size).convert("RGB") for key, im in unique.items()}
        codes = dict(zip(crops, self.vq.encode(list(crops.values())), strict=True))
        rows = [id(im) for im in images]
        return np.stack([codes[k] for k in rows]), np.stack([np.asarray(crops[k], dtype=np.uint8) for k in rows])

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """(B, N) image tokens -> (B, H, W, 3) uint8 pixels."""
        return decode_image_tokens(self.model, tokens).cpu().numpy()

    def context(self, codes: torch.Tensor, pixels: np.ndarray) -> torch.Tensor:
        """Image-1 codes of the regeneration prefix: (R, N) codes, (R, H, W, 3) their decode -> (R, N)."""
        if self.params.regen_context == "sampled":
            return codes
        reencoded = self.vq.encode([Image.fromarray(a) for a in pixels])
        return torch.from_numpy(reencoded).to(codes)

    def images(
        self, prefixes, seeds: list[int], stage: int, want_logprobs: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CFG image tokens for 2B prefixes (B conditional, then their B unconditional twins)."""
        batch = collate(prefixes, self.builder.pad_id, self.image_processor, left=True).to(self.device)
        embeds = batch_embeds(self.model, batch, self.image_processor)
        return self.loop(
            embeds,
            batch.attention_mask,
            stage_seeds(seeds, stage),
            self.params.image,
            self.num_image_tokens,
            want_logprobs,
        )

    def evaluate(self, prompts: list[str], images: list[Image.Image], seeds: list[int], stage: int = 2, sources=None):
        """Forced Yes/No + reason per row: (ids, behaviour log-probs, said_yes) lists. `sources`: the
        rows' source codes for edit chains (the edit self-evaluation's question).

        At text temperature 0 every token is the argmax (the answer: of the two words' first
        tokens), and the log-probs are those of softmax(logits)."""
        from transformers import DynamicCache

        prefixes = [
            self.builder.judge(p, im, None, source=source_row(sources, i))
            for i, (p, im) in enumerate(zip(prompts, images, strict=True))
        ]
        batch = collate(prefixes, self.builder.pad_id, self.image_processor, left=True).to(self.device)
        embeds = batch_embeds(self.model, batch, self.image_processor)
        mask = batch.attention_mask
        positions = batch.position_ids
        lm = self.model.model.language_model
        cache = DynamicCache(config=lm.config)
        cache_kw = cache_keyword(lm)
        rows = len(prompts)
        stream = stage_seeds(seeds, stage).to(self.device)
        temp = self.params.text_temperature
        ids: list[list[int]] = [[] for _ in range(rows)]
        logps: list[list[float]] = [[] for _ in range(rows)]
        forced: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        said_yes = [False] * rows
        first = torch.tensor([self.yes_ids[0], self.no_ids[0]], device=self.device)
        limit = max(len(self.yes_ids), len(self.no_ids)) + self.params.reason_tokens
        for step in range(limit):
            out = lm(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kw: cache}
            )
            if step == 0 and cache.get_seq_length() == 0:
                raise cache_not_written("the language model", cache_kw)
            scaled = self.model.lm_head(out.last_hidden_state[:, -1]).float()
            if temp > 0:
                scaled = scaled / temp
            if step == 0:  # the forced answer: a two-way softmax over the words' first tokens
                scaled = torch.full_like(scaled, float("-inf")).index_copy_(1, first, scaled[:, first])
            if temp > 0:
                gumbel = -torch.log(-torch.log(counter_uniform(stream, step, scaled.shape[-1])))
                token = torch.argmax(scaled + gumbel, dim=-1)
            else:
                token = torch.argmax(scaled, dim=-1)
            logp = torch.log_softmax(scaled, dim=-1).gather(1, token[:, None]).squeeze(1)
            token, logp = token.tolist(), logp.tolist()
            for r in range(rows):
                if done[r]:
                    token[r] = self.builder.eos_id
                    continue
                if step == 0:
                    said_yes[r] = token[r] == self.yes_ids[0]
                    forced[r] = list((self.yes_ids if said_yes[r] else self.no_ids)[1:])
                    ids[r].append(token[r])
                    logps[r].append(logp[r])
                elif forced[r]:
                    token[r] = forced[r].pop(0)
                    ids[r].append(token[r])
                    logps[r].append(IGNORED)
                else:
                    ids[r].append(token[r])
                    logps[r].append(logp[r])
                    done[r] = token[r] == self.builder.eos_id
                # reason_tokens counts after the row's own word: a 1-token Yes gets no extra token
                # when "No" takes 2 (released: 80 positions with the answer, llama.py:82)
                word = self.yes_ids if said_yes[r] else self.no_ids
                done[r] = done[r] or len(ids[r]) >= len(word) + self.params.reason_tokens
            if all(done):
                break
            next_ids = torch.tensor(token, device=self.device)[:, None]
            embeds = self.model.get_input_embeddings()(next_ids)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
        return ids, logps, said_yes


class RolloutEngine(ChainSteps):
    """Runs batches of introspective rollouts with a (policy) Janus model."""

    def __init__(
        self,
        model,
        builder: SequenceBuilder,
        image_processor,
        params: RolloutParams,
        loop: ImageTokenLoop | None = None,
    ):
        if params.image.temperature <= 0 or params.text_temperature <= 0:
            raise ValueError("GRPO rollouts sample: image and text temperatures must be > 0")
        super().__init__(model, builder, image_processor, params, loop)

    @torch.no_grad()
    def run(
        self, prompts: list[str], seeds: list[int], sources: np.ndarray | None = None, source_pixels=None
    ) -> Rollouts:
        """B rollouts; with `sources` ((B, N) source codes, prompts = instructions) and their
        `source_pixels`, edit rollouts: the same chain on the edit prompt."""
        b = len(prompts)
        n = self.num_image_tokens
        tok1, lp1 = self.images(self.t2i_prefixes(prompts, sources), seeds, 1)
        pixels1 = self.decode(tok1)
        pil1 = [Image.fromarray(a) for a in pixels1]
        judge_ids, judge_logp, said_yes = self.evaluate(prompts, pil1, seeds, sources=sources)
        tok2 = torch.zeros(b, n, dtype=torch.long, device=self.device)
        lp2 = torch.zeros(b, n, dtype=torch.float32, device=self.device)
        pixels2 = np.zeros_like(pixels1)
        redo = [i for i in range(b) if not said_yes[i]]
        context1 = torch.zeros_like(tok1)
        if redo:
            context1[redo] = self.context(tok1[redo], pixels1[redo])
            redo_sources = None if sources is None else np.asarray(sources)[redo]
            prefixes = self.regen_prefixes(
                [prompts[i] for i in redo], context1[redo], [judge_ids[i] for i in redo], redo_sources
            )
            t2, l2 = self.images(prefixes, [seeds[i] for i in redo], 3)
            tok2[redo], lp2[redo] = t2, l2
            pixels2[redo] = self.decode(t2)
        return Rollouts(
            prompts=list(prompts),
            seeds=list(seeds),
            image1=tok1.clone(),
            image1_logp=lp1.clone(),
            said_yes=torch.tensor(said_yes),
            judge_ids=judge_ids,
            judge_logp=judge_logp,
            image2=tok2.clone(),
            image2_logp=lp2.clone(),
            pixels1=pixels1,
            pixels2=pixels2,
            context1=context1,
            sources=None if sources is None else np.asarray(sources),
            source_pixels=source_pixels,
        )
