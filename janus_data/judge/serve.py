"""`janus serve judge`: check the options, load the judge, bind the LMDeploy stand-in (`server.JudgeServer`).

The options are checked before torch or transformers are imported, so a typo fails at once.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

from janus_data.errors import ConfigError

if TYPE_CHECKING:
    from janus_data.judge.server import JudgeServer

Engine = Literal["turbomind", "pytorch"]
LogprobsMode = Literal["raw_logprobs", "raw_logits"]
ENGINES = ("turbomind", "pytorch")
LOGPROBS_MODES = ("raw_logprobs", "raw_logits")
API_KEY_ENV = "JANUS_JUDGE_API_KEY"  # environment variable of the judge servers' key: server and client read the same


def check_serve_options(engine: str, logprobs_mode: str | None) -> None:
    """The engine and its logprobs mode are ones LMDeploy 0.18 takes together, or a ConfigError."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, not '{engine}'", hint="pick one")
    if logprobs_mode is not None and (engine != "pytorch" or logprobs_mode not in LOGPROBS_MODES):
        raise ConfigError(
            f"--logprobs-mode {logprobs_mode} is not valid here",
            hint=f"it takes {' or '.join(LOGPROBS_MODES)}, with --engine pytorch (TurboMind always returns logprobs)",
        )


def start_judge_server(
    model: str,
    host: str = "127.0.0.1",
    port: int = 23333,
    model_name: str | None = None,
    engine: str = "turbomind",
    logprobs_mode: str | None = None,
    generation_config: str = "auto",
    session_len: int | None = None,
    device: str = "auto",
    max_batch: int = 16,
    max_tiles: int = 12,
    api_key_env: str = API_KEY_ENV,
    trust_remote_code: bool = False,
) -> JudgeServer:
    """Load the InternVL judge and bind its server (call `serve_forever` on it); the key is read from `api_key_env`."""
    check_serve_options(engine, logprobs_mode)
    from janus_data.config import RuntimeConfig
    from janus_data.judge.hf import HFJudge
    from janus_data.judge.server import JudgeServer, generation_defaults
    from janus_data.models import resolve_device, resolve_dtype

    runtime = RuntimeConfig(device=device)
    dev = resolve_device(runtime)
    judge = HFJudge(model, dev, resolve_dtype(runtime, dev), max_tiles=max_tiles, trust_remote_code=trust_remote_code)
    return JudgeServer(
        judge,
        host,
        port,
        model_name=model_name,
        api_key=os.environ.get(api_key_env) or None,
        max_batch=max_batch,
        engine=engine,
        logprobs_mode=logprobs_mode,
        generation_config=generation_defaults(judge, generation_config),
        session_len=session_len,
    )


def serving_line(server: JudgeServer, api_key_env: str) -> str:
    """The line `janus serve judge` prints once it listens: where, which engine, whether a key is needed."""
    key = f"clients must send the key in ${api_key_env}" if server.api_key else "no API key"
    mode = f"{server.engine} engine" + (f", --logprobs-mode {server.logprobs_mode}" if server.logprobs_mode else "")
    return f"serving judge '{server.model_name}' at {server.url}/v1 ({mode}; {key}); Ctrl-C stops"
