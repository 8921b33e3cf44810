"""Build the configured judge backend: the one place that chooses between hf and lmdeploy."""

from __future__ import annotations

from janus_data.config import JanusRunConfig
from janus_data.judge.types import Judge
from janus_data.models import resolve_device, resolve_dtype, resolve_model


def check_judge(cfg: JanusRunConfig) -> None:
    """Fail in seconds, before any work, if the judge cannot be reached (missing checkpoint, server down)."""
    score = cfg.score
    if score.backend == "hf":
        resolve_model(score.model)
    else:
        server_judge(cfg).check()


def server_judge(cfg: JanusRunConfig):
    """The lmdeploy backend: a client of OpenAI-compatible judge servers."""
    from janus_data.judge.client import ServerJudge

    s = cfg.score
    return ServerJudge(
        list(s.endpoints),
        model=s.model,
        concurrency=s.concurrency,
        timeout_s=s.timeout_s,
        retries=s.retries,
        backoff_s=s.backoff_s,
        reason_tokens=s.reason_tokens,
        top_logprobs=s.top_logprobs,
        api_key_env=s.api_key_env,
    )


def make_judge(cfg: JanusRunConfig) -> Judge:
    """The configured judge, loaded and ready to score."""
    s = cfg.score
    if s.backend == "lmdeploy":
        return server_judge(cfg)
    from janus_data.judge.hf import HFJudge

    device = resolve_device(cfg.runtime)
    dtype = resolve_dtype(cfg.runtime, device)
    return HFJudge(
        s.model,
        device,
        dtype,
        max_tiles=s.max_tiles,
        reason_tokens=s.reason_tokens,
        trust_remote_code=cfg.runtime.trust_remote_code,
    )
