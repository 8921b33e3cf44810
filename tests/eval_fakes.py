"""Hand-made evaluation outputs (the on-disk contract of docs/evaluation.md) and a deterministic fake judge.

`write_generations` builds OUT/images + OUT/manifests/generations as `janus generate` writes them,
so the judge eval and the report are tested without drawing a single image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from judge_fakes import encoded, noise

from janus_data.judge.types import JudgeResult
from janus_data.prompts import prompt_id_for
from janus_eval.gen_manifest import GENERATIONS_SCHEMA

# (prompt, tags): tags of a DPG-Bench style file, a prompt without tags, and one with markup in it.
PROMPTS = [
    ("a sign that reads <script>alert(1)</script>", []),
    ("a red cube on a table", ["color", "object"]),
    ("two cats on a sofa", ["counting"]),
]


@dataclass(frozen=True)
class Chain:
    """Which (prompt index, sample) the fake model redraws, and how often."""

    prompt: int
    sample: int
    rounds: int = 1


def write_generations(
    out: Path, label: str, n: int = 2, redraws: tuple[Chain, ...] = (Chain(1, 0),), seed: int = 0
) -> pl.DataFrame:
    """OUT/images/<gen_id>.png (64 px noise) and one generations part: every prompt x n samples, plus redraws."""
    rows = []
    for p, (text, tags) in enumerate(PROMPTS):
        pid = prompt_id_for(text)
        for s in range(n):
            rounds = next((c.rounds for c in redraws if (c.prompt, c.sample) == (p, s)), 0)
            for r in range(rounds + 1):
                gen_id = f"{pid}-{s}-r{r}"
                img_seed = seed * 1000 + p * 100 + s * 10 + r
                (out / "images").mkdir(parents=True, exist_ok=True)
                (out / "images" / f"{gen_id}.png").write_bytes(encoded(noise(64, 64, img_seed), "PNG"))
                rows.append(
                    {
                        "gen_id": gen_id,
                        "checkpoint": label,
                        "label": label,
                        "prompt_id": pid,
                        "prompt": text,
                        "tags": tags,
                        "metadata": None,
                        "sample": s,
                        "round": r,
                        "seed": img_seed,
                        "image_path": f"images/{gen_id}.png",
                        "answer": "No" if r < rounds else ("Yes" if rounds else None),
                        "reason": "the cube is blue" if r < rounds else None,
                        "final": r == rounds,
                        "context_gen_id": f"{pid}-{s}-r{r - 1}" if r else None,
                    }
                )
    df = pl.DataFrame(rows, schema=GENERATIONS_SCHEMA)
    part = out / "manifests" / "generations" / "part-00000.parquet"
    part.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(part)
    return df


def fake_s(data: bytes) -> float:
    """A deterministic S in [0, 1) from the image bytes."""
    return int(hashlib.sha256(data).hexdigest()[:8], 16) / 16**8


class FakeJudge:
    """A judge whose S depends only on the image bytes; records every prompt it was sent."""

    model_id = "fake-judge"

    def __init__(self, fail_on_call: int | None = None, error: Exception | None = None) -> None:
        self.sent: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.error = error

    def score(self, prompts: list[str], images: list[bytes]) -> list[JudgeResult]:
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise self.error
        self.sent += prompts
        out = []
        for image in images:
            s = fake_s(image)
            out.append(JudgeResult(s, "yes" if s >= 0.5 else "no", f"fake reason {s:.2f}", False))
        return out


class NoJudge:
    """A judge that must not be asked."""

    model_id = "never"

    def score(self, prompts, images):
        raise AssertionError("nothing is left to judge: the judge must not be asked")
