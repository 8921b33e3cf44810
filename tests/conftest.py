"""Shared fixtures: one tiny-model cache per test session, offline, no progress bars; the gpu marker.

Nothing here is shared between test sessions: caches and runs live under pytest's per-session
temp directory and ports are bound to 0, so two copies of the suite can run side by side.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["JANUS_NO_PROGRESS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One math thread per test process: the suite runs several processes at once (ranks, kill
# tests) and oversubscribed CPUs make torch 10-100x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Triton kernels run on CPU tensors through Triton's interpreter. Triton reads this when it is
# first imported, and transformers or torch may import it early, so it is set here, first.
os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu`-marked tests where torch sees no CUDA device (plain pytest is CPU-only)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
        for item in gpu:
            item.add_marker(skip)


@pytest.fixture
def dead_url() -> Iterator[str]:
    """The URL of a port nobody listens on: bound here (so no other process can take it) but never
    listening, so a connection is refused at once. A fixed port (9, 23333) is no such guarantee."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="session", autouse=True)
def janus_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point JANUS_CACHE at a per-session directory (subprocesses inherit it)."""
    path = tmp_path_factory.mktemp("janus-cache")
    old = os.environ.get("JANUS_CACHE")
    os.environ["JANUS_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("JANUS_CACHE", None)
    else:
        os.environ["JANUS_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_janus(janus_cache: Path) -> Path:
    """Directory of the tiny Janus-Pro, built once per session."""
    from janus_data.models import tiny_model_path

    return tiny_model_path("janus")


@pytest.fixture(scope="session")
def tiny_flux(janus_cache: Path) -> Path:
    """Directory of the tiny FLUX pipeline, built once per session."""
    from janus_data.models import tiny_model_path

    return tiny_model_path("flux")


@pytest.fixture(scope="session")
def tiny_internvl(janus_cache: Path) -> Path:
    """Directory of the tiny InternVL judge, built once per session."""
    from janus_data.models import tiny_model_path

    return tiny_model_path("internvl")


@pytest.fixture(scope="session")
def judge(tiny_internvl: Path):
    """The tiny InternVL judge in process (2 tiles, 8-token reasons), shared by the judge tests."""
    import torch

    from janus_data.judge.hf import HFJudge

    return HFJudge(str(tiny_internvl), torch.device("cpu"), torch.float32, max_tiles=2, reason_tokens=8)
