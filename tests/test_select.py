"""The SFT selection on hand-made manifests: the Task II label table, Task III pairs, generator roles."""

from __future__ import annotations

import doctest
import hashlib
from dataclasses import replace

import polars as pl
import pytest

import janus_data.select
from janus_data.config import FilterConfig
from janus_data.select import labelled_reason, pool, reason_answer, select_all

THRESHOLD = 0.7
HIGH, LOW = 0.9, 0.3  # one S on each side of the threshold
REASONS = {"yes": "Yes, the cat is red.", "no": "no. The cat is blue.", "other": "Maybe a cat.", "empty": ""}
# (S, answer) -> label under 'agree' and under 'answer' (None: not a Task II sample, nor a Task III bad image)
TABLE = {
    (HIGH, "yes"): ("Yes", "Yes"),
    (HIGH, "no"): (None, "No"),
    (HIGH, "other"): (None, None),
    (HIGH, "empty"): ("Yes", "Yes"),
    (LOW, "yes"): (None, None),
    (LOW, "no"): ("No", "No"),
    (LOW, "other"): (None, None),
    (LOW, "empty"): ("No", "No"),
}
RULES = ("agree", "answer")


def manifests(rows: list[tuple[str, str, str, float, str]]) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.LazyFrame]:
    """Scores, images and prompts manifests of (image_id, prompt_id, generator, S, reason) rows."""
    ids, pids, gens, s, reasons = (list(c) for c in zip(*rows, strict=True))
    scores = pl.DataFrame(
        {"image_id": ids, "prompt_id": pids, "score": s, "reason": reasons, "status": ["ok"] * len(ids)}
    )
    images = pl.DataFrame(
        {"image_id": ids, "generator": gens, "sha256": [hashlib.sha256(i.encode()).hexdigest() for i in ids]}
    )
    prompts = pl.DataFrame({"prompt_id": sorted(set(pids))})
    return scores.lazy(), images.lazy(), prompts.lazy()


def cfg(rule: str = "agree", **kw) -> FilterConfig:
    caps = {"t2i_per_prompt": 0, "judge_per_prompt": 0, "regen_per_prompt": 0}
    return replace(FilterConfig(threshold=THRESHOLD, judge_labels=rule), **{**caps, **kw})


def table_rows(copies: int = 1) -> list[tuple]:
    """Every (S side, answer) combination, `copies` images each, all of one prompt, half flux half janus."""
    return [(f"{s}-{a}-{k}", "p0", ("flux", "janus")[k % 2], s, REASONS[a]) for (s, a) in TABLE for k in range(copies)]


def selected(rows: list[tuple], fcfg: FilterConfig) -> dict[str, pl.DataFrame]:
    return {t: plan.collect() for t, plan in select_all(pool(*manifests(rows), fcfg), fcfg).items()}


@pytest.mark.parametrize("rule", RULES)
def test_label_table(rule):
    labels = dict(pool(*manifests(table_rows()), cfg(rule)).select("image_id", "label").collect().iter_rows())
    for (s, answer), expected in TABLE.items():
        assert labels[f"{s}-{answer}-0"] == expected[RULES.index(rule)], (rule, s, answer)


def test_label_table_literally():
    """The same table spelled out, so a reader need not decode TABLE."""
    labels = {
        rule: dict(pool(*manifests(table_rows()), cfg(rule)).select("image_id", "label").collect().iter_rows())
        for rule in RULES
    }
    agree, answer = labels["agree"], labels["answer"]
    assert (agree["0.9-yes-0"], answer["0.9-yes-0"]) == ("Yes", "Yes")
    assert (agree["0.9-no-0"], answer["0.9-no-0"]) == (None, "No")
    assert (agree["0.9-other-0"], answer["0.9-other-0"]) == (None, None)
    assert (agree["0.9-empty-0"], answer["0.9-empty-0"]) == ("Yes", "Yes")
    assert (agree["0.3-yes-0"], answer["0.3-yes-0"]) == (None, None)
    assert (agree["0.3-no-0"], answer["0.3-no-0"]) == ("No", "No")
    assert (agree["0.3-other-0"], answer["0.3-other-0"]) == (None, None)
    assert (agree["0.3-empty-0"], answer["0.3-empty-0"]) == ("No", "No")


def test_threshold_is_inclusive_and_answer_words_are_first_words():
    rows = [
        ("at", "p0", "flux", THRESHOLD, "YES: it is."),
        ("lead", "p0", "flux", LOW, "  ...No, it is not."),
        ("glued", "p0", "flux", LOW, "Nope, a dog."),
        ("later", "p0", "flux", LOW, "The answer is no."),
        ("blank", "p0", "flux", HIGH, "   "),
    ]
    labels = dict(pool(*manifests(rows), cfg()).select("image_id", "label").collect().iter_rows())
    assert labels == {"at": "Yes", "lead": "No", "glued": None, "later": None, "blank": "Yes"}


def test_python_and_polars_read_the_same_answer():
    reasons = ["Yes.", " no", "**No**, a dog", "yes_no", "Nono", "Yesterday", "¿No?", "no-thing", "Maybe", "YeS"]
    rows = [(f"i{k}", "p0", "flux", HIGH, r) for k, r in enumerate(reasons)]
    says = pool(*manifests(rows), cfg()).select("image_id", "says_yes").collect()
    polars_side = {i: ({True: "yes", False: "no"}.get(v)) for i, v in says.iter_rows()}
    assert polars_side == {f"i{k}": reason_answer(r) for k, r in enumerate(reasons)}


@pytest.mark.parametrize("rule", RULES)
def test_judge_samples_follow_the_table_and_never_flip_the_reason(rule):
    rows = table_rows(copies=4)
    out = selected(rows, cfg(rule))["judge"]
    reasons = {r[0]: r[4] for r in rows}
    expected = {r[0]: TABLE[(r[3], r[0].split("-")[1])][RULES.index(rule)] for r in rows}
    labels = dict(zip(out["image_id"], out["label"], strict=True))
    assert labels and all(expected[i] == label for i, label in labels.items())
    assert out["label"].value_counts().sort("label")["count"].to_list() == [8, 8]  # balanced: 8 No and 8 Yes
    opposite = {"Yes": "no", "No": "yes"}
    for image_id, label in labels.items():
        target = labelled_reason(label, reasons[image_id])
        assert target.startswith(label) and reason_answer(target) != opposite[label]
        assert target.lower() == (reasons[image_id] or f"{label}.").lower()  # only the first word's case changes


def test_labelled_reason_refuses_to_flip():
    assert labelled_reason("No", "no. The cat is blue.") == "No. The cat is blue."
    assert labelled_reason("Yes", "YES it is") == "Yes it is"
    assert labelled_reason("Yes", "") == "Yes."
    for label, reason in (("No", "Yes, the image matches."), ("Yes", "No."), ("Yes", "Maybe."), ("Maybe", "Yes.")):
        with pytest.raises(ValueError):
            labelled_reason(label, reason)


def regen_rows() -> list[tuple]:
    """One prompt: good images of both generators, No images below and (for 'answer') above the threshold."""
    return [
        ("good-f1", "p0", "flux", 0.95, "Yes, fine."),
        ("good-f2", "p0", "flux", 0.80, "Yes."),
        ("good-j1", "p0", "janus", 0.85, "Yes, close."),
        ("bad-f", "p0", "flux", 0.20, "No, wrong colour."),
        ("bad-j", "p0", "janus", 0.10, "No."),
        ("bad-yes", "p0", "janus", 0.30, "Yes, but S is low."),  # unlabelled: never a bad image
        ("bad-other", "p0", "flux", 0.25, "Hmm."),  # unlabelled
        ("no-high", "p0", "flux", 0.82, "No, the dog is missing."),  # 'answer': No above the threshold
        ("no-top", "p0", "janus", 0.99, "No, nothing matches."),  # 'answer': No above every good image
        ("lonely", "p1", "flux", 0.10, "No."),  # no good image in its prompt
    ]


@pytest.mark.parametrize("rule", RULES)
def test_regen_pairs_a_no_image_with_a_better_yes_image(rule):
    rows = regen_rows()
    score = {r[0]: r[3] for r in rows}
    labels = dict(pool(*manifests(rows), cfg(rule)).select("image_id", "label").collect().iter_rows())
    out = selected(rows, cfg(rule))["regen"]
    for bad, good in zip(out["image_id"], out["image_id_good"], strict=True):
        assert labels[bad] == "No" and labels[good] == "Yes" and score[good] > score[bad]
        assert reason_answer(labelled_reason("No", dict((r[0], r[4]) for r in rows)[bad])) == "no"
    bads = set(out["image_id"])
    assert out["image_id"].n_unique() == out.height  # one pair per bad image
    if rule == "agree":
        assert bads == {"bad-f", "bad-j"}
    else:  # no-high pairs with the one good image above it; no-top has none
        assert bads == {"bad-f", "bad-j", "no-high"}
        assert out.filter(pl.col("image_id") == "no-high")["image_id_good"].to_list() == ["good-f1"]


def test_regen_pairs_cycle_through_the_good_images():
    rows = [(f"g{k}", "p0", "flux", 0.8 + k / 100, "Yes.") for k in range(2)]
    rows += [(f"b{k}", "p0", "flux", 0.1 + k / 100, "No.") for k in range(5)]
    out = selected(rows, cfg(regen_per_prompt=4))["regen"]
    assert out.height == 4  # the cap
    uses = out["image_id_good"].value_counts()["count"].to_list()
    assert sorted(uses) == [2, 2]  # each good image serves two bad ones
    again = selected(rows, cfg(regen_per_prompt=4))["regen"]
    assert again.equals(out)


def test_generator_roles():
    rows = regen_rows() + [(f"j{k}", "p2", ("flux", "janus")[k % 2], (0.1, 0.9)[k // 2 % 2], "") for k in range(8)]
    gen = {r[0]: r[2] for r in rows}
    both = selected(rows, cfg())
    assert {gen[i] for i in both["t2i"]["image_id"]} == {"flux", "janus"}
    assert {gen[i] for i in both["judge"]["image_id"]} == {"flux", "janus"}
    assert {gen[i] for i in both["regen"]["image_id"]} == {"flux", "janus"}
    assert {gen[i] for i in both["regen"]["image_id_good"]} == {"flux", "janus"}

    released = selected(rows, cfg(target_generators=("flux",), judge_generators=("flux",)))
    assert {gen[i] for i in released["t2i"]["image_id"]} == {"flux"}
    assert {gen[i] for i in released["regen"]["image_id_good"]} == {"flux"}
    assert {gen[i] for i in released["judge"]["image_id"]} == {"flux"} and released["judge"].height > 0
    assert {gen[i] for i in released["regen"]["image_id"]} == {"flux", "janus"}  # context: both

    janus_context = selected(rows, cfg(context_generators=("janus",)))
    assert {gen[i] for i in janus_context["regen"]["image_id"]} == {"janus"}
    janus_only = selected(rows, cfg(target_generators=("janus",), judge_generators=("janus",)))
    assert {gen[i] for i in janus_only["t2i"]["image_id"]} == {"janus"}
    assert {gen[i] for i in janus_only["judge"]["image_id"]} == {"janus"}
    assert {gen[i] for i in janus_only["regen"]["image_id_good"]} == {"janus"}


def test_doctests():
    assert doctest.testmod(janus_data.select).failed == 0
