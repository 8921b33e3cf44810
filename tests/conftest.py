"""Shared fixtures: one tiny-model cache per test session, offline, no progress bars."""

from __future__ import annotations

import os
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
