"""The report's image-editing section: the edit stages' counts and rewards, a gallery of edits, the edit SFT data.

Reads what `janus data synth|score --task edit` and `janus data filter --task edit` wrote
(janus_data.edit_manifest, edit_synth, edit_score; `<run>/sft_edit/state.json`). The section exists
only when the run has edits, and a run without them reads nothing but two directory listings. An
unreadable image becomes a grey tile and a note, an unreadable file a note: never a failed report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from PIL import Image

from janus_data import plots
from janus_data.edit_manifest import read_edits_manifest, source_path
from janus_data.edit_score import EDIT_SCORE_SCHEMA
from janus_data.errors import JanusError, one_line
from janus_data.janus_format import EDIT_TASKS
from janus_data.manifest import EDIT_IMAGES_KIND, EDIT_SCORES_KIND, EDITS_KIND, part_files, scan_manifest
from janus_data.report_data import RunData
from janus_data.report_eval import asset_name
from janus_data.report_html import Assets, esc, fmt, not_run, table
from janus_data.rundir import SFT_EDIT_DIR, STATE_FILE
from janus_data.storage import open_image
from janus_data.synth import IMAGE_SCHEMA

THUMB = 112
REASON_CHARS = 120  # a judge's reason is cut to this many characters in a caption
EDITORS = ("kontext", "janus")  # listed first, in this order; any other generator follows by name
IMAGE_COLUMNS = ["image_id", "prompt_id", "generator", "index", "shard", "offset", "length"]
SCORE_COLUMNS = ["image_id", "status", "error", "score_flw", "score_psv", "reward", "reason_flw"]


@dataclass
class EditRun:
    """The edit manifests of a run (every score row: ok, flagged, error) and the edit filter's state."""

    edits: pl.DataFrame
    images: pl.DataFrame
    scores: pl.DataFrame
    sft_state: dict | None

    @property
    def ok(self) -> pl.DataFrame:
        return self.scores.filter(pl.col("status") == "ok")

    def editors(self) -> list[str]:
        names = set(self.images["generator"]) | set(self.scores["generator"])
        return [g for g in EDITORS if g in names] + sorted(names - set(EDITORS))


def has_edits(run_dir: Path) -> bool:
    """Whether the run has edit sources or candidate edits (two directory listings, nothing read)."""
    return bool(part_files(run_dir, EDITS_KIND) or part_files(run_dir, EDIT_IMAGES_KIND))


def _state(run_dir: Path) -> dict | None:
    try:
        state = json.loads((Path(run_dir) / SFT_EDIT_DIR / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def load_edit_run(run_dir: Path) -> EditRun:
    """Read the run's edit manifests (one row per image id) and `sft_edit/state.json` (None when unreadable)."""
    images = scan_manifest(run_dir, EDIT_IMAGES_KIND, IMAGE_SCHEMA).collect()
    scores = scan_manifest(run_dir, EDIT_SCORES_KIND, EDIT_SCORE_SCHEMA).collect()
    for kind, frame, need in ((EDIT_IMAGES_KIND, images, IMAGE_COLUMNS), (EDIT_SCORES_KIND, scores, SCORE_COLUMNS)):
        if frame.height and (missing := [c for c in (*need, "generator") if c not in frame.columns]):
            raise ValueError(f"manifests/{kind} lacks column(s) {', '.join(missing)}")
    return EditRun(
        edits=read_edits_manifest(run_dir).unique("edit_id", keep="first", maintain_order=True),
        images=images.unique("image_id", keep="first", maintain_order=True),
        scores=scores.unique("image_id", keep="last", maintain_order=True),
        sft_state=_state(run_dir),
    )


# ---------------------------------------------------------------- counts, means, the R histogram


def _tile(k: str, v: str) -> str:
    return f'<div class="tile"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'


def _counts(e: EditRun) -> str:
    per = dict(e.images.group_by("generator").len().rows())
    status = dict(e.scores.group_by("status").len().rows())
    tiles = [
        ("edits", fmt(e.edits.height)),
        *((f"candidate edits · {g}", fmt(per.get(g, 0))) for g in e.editors()),
        ("scored", fmt(status.get("ok", 0))),
        ("flagged", fmt(status.get("flagged", 0))),
        ("error rows", fmt(status.get("error", 0))),
    ]
    return '<div class="tiles">' + "".join(_tile(k, v) for k, v in tiles) + "</div>"


def _means(e: EditRun) -> str:
    candidates = dict(e.images.group_by("generator").len().rows())
    by = dict(((g, s), n) for g, s, n in e.scores.group_by("generator", "status").len().rows())
    rows = []
    for g in e.editors():
        ok = e.ok.filter(pl.col("generator") == g)
        counts = [candidates.get(g, 0), *(by.get((g, s), 0) for s in ("ok", "flagged", "error"))]
        means = [fmt(ok[c].mean(), 3) if ok.height else "-" for c in ("score_flw", "score_psv", "reward")]
        rows.append([g, *map(fmt, counts), *means])
    header = ["editor", "candidates", "ok", "flagged", "error", "mean S_flw", "mean S_psv", "mean R"]
    return table(header, rows)


def _weight(d: RunData, key: str, default: float) -> float:
    v = d.cfg("edit", key, default)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def _histogram(d: RunData, e: EditRun, a: Assets) -> str:
    w_flw, w_psv = _weight(d, "reward_flw", 1.0), _weight(d, "reward_psv", 0.25)
    rewards = {g: e.ok.filter(pl.col("generator") == g)["reward"].drop_nulls().to_list() for g in e.editors()}
    rewards = {g: r for g, r in rewards.items() if r}
    top = max([w_flw + w_psv, *(max(r) for r in rewards.values())]) or 1.0
    edges = [top * i / 10 for i in range(11)]
    hist = {g: plots.histogram(r, edges) for g, r in rewards.items()}
    title = f"R = {w_flw:g}·S_flw + {w_psv:g}·S_psv per editor (10 bins)"
    svg = plots.bar_plot(edges, hist, title, "R", "candidate edits")
    return f'<div class="plots">{a.svg("edit-reward-hist", svg, "histogram of the edit reward R")}</div>'


# ---------------------------------------------------------------- the gallery


def _short(text: str | None, n: int = REASON_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _grey() -> Image.Image:
    return Image.new("RGB", (THUMB, THUMB), "#d1d9e0")


def _thumb(open_fn, what: str, unreadable: list[str]) -> Image.Image:
    """A thumbnail of the image `open_fn` opens (decoded in full here), or a grey tile and `what` noted."""
    try:
        with open_fn() as img:
            img.load()
            return plots.thumbnail(img, THUMB)
    except (JanusError, OSError, ValueError, SyntaxError):  # PIL raises the last two for some damaged files
        unreadable.append(what)
        return _grey()


def _run_file(run_dir: Path, rel: str | None) -> Path:
    """A file named relative to the run, refused (OSError) if the name leads outside it."""
    root = Path(run_dir).resolve()
    path = (root / (rel or "")).resolve()
    if not rel or not path.is_relative_to(root):
        raise OSError(f"{rel!r} is not a file inside the run")
    return path


def _figure(src: str, label: str, caption: str, cls: str = "") -> str:
    return (
        f'<figure class="{cls}"><img src="{src}" width="{THUMB}" height="{THUMB}" alt="{esc(label)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _caption(row: dict) -> str:
    head = f"<b>{esc(row['generator'])}</b> #{esc(row['index'])}"
    status = row.get("status")
    if status is None:
        return head + '<span class="reason">not scored</span>'
    if status == "error":
        return head + f' · error<span class="reason">{esc(_short(row.get("error")))}</span>'
    scores = f"S_flw {fmt(row['score_flw'], 3)} · S_psv {fmt(row['score_psv'], 3)} · R {fmt(row['reward'], 3)}"
    flag = " · flagged" if status == "flagged" else ""
    reason = esc(_short(row.get("reason_flw"))) or "(no reason given)"
    return f'{head}{flag}<br>{scores}<span class="reason">{reason}</span>'


def _card(d: RunData, e: EditRun, a: Assets, edit: dict, rows: list[dict], unreadable: list[str]) -> str:
    eid, run = edit["edit_id"], d.run_dir
    rel = edit.get("source_path") or source_path(eid)
    src = a.png(asset_name("edit", eid, "source"), _thumb(lambda: Image.open(_run_file(run, rel)), rel, unreadable))
    figs = [_figure(src, "source", "<b>source</b> (prepared)", "source")]
    if ref := edit.get("reference_path"):
        img = _thumb(lambda: Image.open(_run_file(run, ref)), ref, unreadable)
        figs.append(_figure(a.png(asset_name("edit", eid, "reference"), img), "reference", "<b>reference</b>"))
    for i, row in enumerate(rows):
        img = _thumb(lambda r=row: open_image(run, r["shard"], r["offset"], r["length"]), row["image_id"], unreadable)
        cls = "best" if i == 0 and len(rows) > 1 else ("worst" if i == len(rows) - 1 and len(rows) > 1 else "")
        figs.append(_figure(a.png(asset_name("edit", row["image_id"]), img), "candidate edit", _caption(row), cls))
    rs = [r["reward"] for r in rows if r.get("reward") is not None]
    mean = f" · mean R {sum(rs) / len(rs):.3f}" if rs else ""
    return (
        f'<article class="prompt"><h4>{esc(edit["instruction"])}</h4><p class="muted"><code>{esc(eid)}</code> · '
        f'{len(rows)} candidate edits{mean}, best R first</p><div class="editrow">{"".join(figs)}</div></article>'
    )


def _pick(order: list[str], shown: int) -> list[str]:
    """The best half and the worst half of `order` (best first), `shown` in all, so both ends are visible."""
    if len(order) <= shown:
        return order
    top = (shown + 1) // 2
    return order[:top] + order[len(order) - (shown - top) :]


def _gallery(d: RunData, e: EditRun, a: Assets, shown: int, notes: list[str]) -> str:
    cands = e.images.select(IMAGE_COLUMNS).join(e.scores.select(SCORE_COLUMNS), on="image_id", how="left")
    cands = cands.sort(["reward", "image_id"], descending=[True, False], nulls_last=True)
    means = cands.group_by("prompt_id").agg(pl.col("reward").mean().alias("mean"))
    known = e.edits.join(means, left_on="edit_id", right_on="prompt_id", how="inner").with_row_index("order")
    known = known.sort(["mean", "order"], descending=[True, False], nulls_last=True)
    picked = _pick(known["edit_id"].to_list(), max(0, shown))
    cards, unreadable = [], []
    for edit in known.filter(pl.col("edit_id").is_in(picked)).iter_rows(named=True):
        rows = cands.filter(pl.col("prompt_id") == edit["edit_id"]).to_dicts()
        cards.append(_card(d, e, a, edit, rows, unreadable))
    if unreadable:
        notes.append(f"image editing: {len(unreadable)} image(s) could not be read, e.g. {unreadable[0]}")
    more = known.height - len(picked)
    what = (
        f"{len(picked)} of {known.height} edits (the highest and the lowest mean R)" if more else "every edit by mean R"
    )
    head = f'<h3>Edits</h3><p class="muted">{what}, best first; each edit\'s candidates by R, best first</p>'
    tail = f'<p class="muted">{more} more edit(s) not shown</p>' if more > 0 else ""
    return head + f'<div class="evalcards">{"".join(cards)}</div>' + tail if cards else ""


# ---------------------------------------------------------------- the edit SFT data


def _sft(d: RunData, e: EditRun) -> str:
    state = e.sft_state
    info = state.get("tasks") if state else None
    if not isinstance(info, dict):
        return f'<p class="muted">edit SFT samples: not built yet (<code>{esc(d.command("data filter --task edit"))}</code>)</p>'
    counts = {t: v.get("samples", 0) if isinstance(v := info.get(t), dict) else 0 for t in EDIT_TASKS}
    counts = {t: n if isinstance(n, int) else 0 for t, n in counts.items()}
    total, rows = sum(counts.values()) or 1, []
    for t in EDIT_TASKS:
        shard = info.get(t) if isinstance(info.get(t), dict) else {}
        files = shard.get("shard_files")
        n_shards = len(files) if isinstance(files, list) else shard.get("shards")
        size = shard.get("bytes")
        mib = f"{size / 2**20:.2f}" if isinstance(size, (int, float)) else "-"
        rows.append(
            [t, fmt(counts[t]), f"{counts[t] / total:.1%}", fmt(n_shards if isinstance(n_shards, int) else None), mib]
        )
    html = "<h3>Edit SFT samples</h3>" + table(["task", "samples", "share", "shards", "MiB"], rows)
    stats = state.get("stats")
    if isinstance(stats, dict) and stats:
        parts = [f"{k} {fmt(v)}" for k, v in sorted(stats.items()) if isinstance(v, (int, float, str))]
        html += f'<p class="muted">{esc(" · ".join(parts))}</p>'
    return html


def edit_section(d: RunData, a: Assets, shown: int, notes: list[str]) -> str | None:
    """The image-editing section's body, or None when the run has no edits."""
    if not has_edits(d.run_dir):
        return None
    try:
        e = load_edit_run(d.run_dir)
    except Exception as err:  # a torn or foreign manifest: say so, keep the report
        notes.append(f"image editing: cannot read the edit manifests: {one_line(err, 120)}")
        return f'<p class="muted">cannot read the edit manifests: {esc(one_line(err, 200))}</p>'
    html = _counts(e)
    if e.scores.height:
        html += _means(e) + _histogram(d, e, a)
    else:
        html += not_run(d.command("data score --task edit"))
    return html + _gallery(d, e, a, shown, notes) + _sft(d, e)
