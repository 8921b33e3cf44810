"""What LMDeploy 0.18's two engines do to one step's logits: the sampling and logprobs of `janus serve judge`.

Read from LMDeploy 0.18.0 (its wheel for the Python, InternLM/lmdeploy on GitHub for the C++):

- Request fields merge over the server's defaults (`--generation-config auto` reads the model's
  generation_config.json), then over GenerationConfig's own defaults (temperature 0.8, top_k 50,
  top_p 1.0); `do_sample` is always on (serve/core/generation_config.py `build_generation_config`,
  messages.py `GenerationConfig`).
- TurboMind (src/turbomind/layers/sampling_layers/*.cc, kernels/sampling_penalty_kernels.cu):
  repetition penalty over the prompt and the output so far, then logits x 1/(T + 1e-6) (so
  temperature 0 is ~1e6x), then top-k (0: off; top_k 0 with top_p 0 means 1), then softmax and
  top-p / min-p over what is left. The reported logprobs are those of the kept candidates after
  all of that (`sampled_logprobs`), the top n of them plus the chosen token
  (turbomind/turbomind.py `_get_logprobs_impl`; -inf candidates are dropped).
- PyTorch engine (pytorch/engine/logits_process.py): logprobs are taken from the RAW logits
  before any processing, and only when the server was started with `--logprobs-mode`
  (`raw_logprobs`: log-softmax, `raw_logits`: the logits themselves); otherwise a logprobs
  request is refused (serve/openai/chat_completions/validation.py). Temperature 0 becomes top-k 1
  at temperature 1 (pytorch/messages.py); repetition penalty covers generated tokens only; the
  report is the chosen token then the top n (`compute_logprobs`).

Either way the response lists the chosen token in `content[i]` and only the OTHER candidates in
`top_logprobs` (serve/openai/chat_completions/logprobs.py), as vocabulary pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from janus_data.judge.serve import LogprobsMode  # the engines' names live with the options that pick them

TURBOMIND_TEMPERATURE_EPS = 1e-6  # sampling_penalty_kernels.cu: 1 / (temperature + 1e-6f)
MAX_TOP_K = 1024  # TurboMind clamps top_k to [0, 1024]

# GenerationConfig's fields that shape sampling, with LMDeploy's own defaults (messages.py).
SAMPLING_DEFAULTS = {"temperature": 0.8, "top_p": 1.0, "top_k": 50, "min_p": 0.0, "repetition_penalty": 1.0}


@dataclass(frozen=True)
class Sampling:
    """One request's effective sampling settings after LMDeploy's merge."""

    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 50
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    logprobs: int = 0  # candidates reported per token besides the chosen one (0: no logprobs)


def merge_sampling(request: dict, defaults: dict, logprobs: int, seed: int | None) -> Sampling:
    """Request values over the server's defaults over GenerationConfig's (build_generation_config's order).

    >>> merge_sampling({"temperature": 1.0}, {"top_k": 20, "temperature": 0.7}, 0, None).top_k
    20
    >>> merge_sampling({"temperature": 1.0}, {"top_k": 20, "temperature": 0.7}, 0, None).temperature
    1.0
    """
    values = {k: v for k, v in SAMPLING_DEFAULTS.items()}
    values |= {k: v for k, v in defaults.items() if k in SAMPLING_DEFAULTS and v is not None}
    values |= {k: v for k, v in request.items() if k in SAMPLING_DEFAULTS and v is not None}
    return Sampling(
        temperature=float(values["temperature"]),
        top_p=float(values["top_p"]),
        top_k=int(values["top_k"]),
        min_p=float(values["min_p"]),
        repetition_penalty=float(values["repetition_penalty"]),
        seed=seed,
        logprobs=logprobs,
    )


def _penalize(scores: torch.Tensor, seen: list[int], penalty: float) -> torch.Tensor:
    """Multiplicative repetition penalty on the `seen` ids (negative logits x p, positive / p)."""
    if penalty == 1.0 or not seen:
        return scores
    ids = torch.tensor(sorted(set(seen)), dtype=torch.long, device=scores.device)
    picked = scores[ids]
    scores = scores.clone()
    scores[ids] = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores


def _keep(probs: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Boolean mask of the candidates top-k, then top-p, then min-p keep (probs sorted or not)."""
    keep = torch.ones_like(probs, dtype=torch.bool)
    if top_k > 0:
        keep &= probs >= probs.topk(min(top_k, probs.numel())).values[-1]
    if top_p < 1.0:
        kept = torch.where(keep, probs, torch.zeros_like(probs))
        kept = kept / kept.sum()
        values, order = kept.sort(descending=True)
        before = values.cumsum(0) - values  # mass strictly above each candidate
        keep_sorted = before < top_p
        keep_sorted[0] = True
        keep &= torch.zeros_like(keep).scatter(0, order, keep_sorted)
    if min_p > 0.0:
        keep &= probs >= min_p * probs.max()
    return keep


def _draw(probs: torch.Tensor, seed: int | None, step: int) -> int:
    """One multinomial draw; a request seed makes it reproducible (step-dependent)."""
    gen = None
    if seed is not None:
        gen = torch.Generator(device=probs.device).manual_seed(seed * 1_000_003 + step)
    return int(torch.multinomial(probs, 1, generator=gen))


def _report(values: torch.Tensor, token: int, n: int) -> dict[int, float]:
    """The top n candidates by value plus the chosen token, finite values only."""
    out: dict[int, float] = {}
    if n > 0:
        top = values.topk(min(n, values.numel()))
        out = {int(i): float(v) for v, i in zip(top.values, top.indices, strict=True)}
    out.setdefault(token, float(values[token]))
    return {k: v for k, v in out.items() if v != float("-inf")}


def turbomind_step(logits: torch.Tensor, s: Sampling, seen: list[int], step: int) -> tuple[int, dict[int, float]]:
    """TurboMind on one row's logits (V,): (the sampled id, {id: logprob} it reports)."""
    scores = _penalize(logits.float(), seen, s.repetition_penalty)
    scores = scores * (1.0 / (s.temperature + TURBOMIND_TEMPERATURE_EPS))
    top_k = max(0, min(s.top_k, MAX_TOP_K))
    if top_k == 0 and s.top_p == 0.0:
        top_k = 1
    keep = _keep(scores.softmax(-1), top_k, s.top_p, s.min_p)
    probs = torch.where(keep, scores, torch.full_like(scores, float("-inf"))).softmax(-1)
    token = _draw(probs, s.seed, step)
    # log of the kept probabilities: what underflows (all but one at temperature 0) is -inf, then dropped.
    return token, _report(probs.log(), token, s.logprobs)


def pytorch_step(
    logits: torch.Tensor, s: Sampling, generated: list[int], step: int, mode: LogprobsMode | None
) -> tuple[int, dict[int, float]]:
    """The PyTorch engine on one row's logits (V,): (the sampled id, {id: raw value} it reports)."""
    raw = logits.float()
    temperature, top_k = s.temperature, s.top_k
    if temperature == 0:
        temperature, top_k = 1.0, 1
    scores = _penalize(raw, generated, s.repetition_penalty) / temperature
    if top_k == 1:
        token = int(scores.argmax())
    else:
        keep = _keep(scores.softmax(-1), top_k, s.top_p, s.min_p)
        token = _draw(torch.where(keep, scores, torch.full_like(scores, float("-inf"))).softmax(-1), s.seed, step)
    if mode is None or s.logprobs == 0:
        return token, {}
    values = raw.log_softmax(-1) if mode == "raw_logprobs" else raw
    return token, _report(values, token, s.logprobs)
