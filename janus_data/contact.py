"""Contact sheets: one row of thumbnails per prompt, straight from the image manifest."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
from PIL import Image, ImageDraw

from janus_data.manifest import IMAGES_KIND, atomic_write, scan_manifest
from janus_data.storage import open_image
from janus_data.synth import IMAGE_SCHEMA


def contact_sheet(run_dir: Path, out: Path, max_prompts: int = 8, thumb: int = 64, label: int = 14) -> Path:
    """Write a PNG grid (prompts x candidates, FLUX then Janus-Pro) and return its path."""
    df = scan_manifest(run_dir, IMAGES_KIND, IMAGE_SCHEMA).sort("prompt_id", "generator", "index").collect()
    prompt_ids = df["prompt_id"].unique(maintain_order=True).head(max_prompts).to_list()
    rows = [df.filter(pl.col("prompt_id") == pid) for pid in prompt_ids]
    cols = max((r.height for r in rows), default=0)
    sheet = Image.new("RGB", (max(cols, 1) * thumb, max(len(rows), 1) * (thumb + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for y, row in enumerate(rows):
        top = y * (thumb + label)
        draw.text((2, top + 1), f"{row['prompt_id'][0]}  flux | janus", fill="black")
        for x, r in enumerate(row.iter_rows(named=True)):
            img = open_image(run_dir, r["shard"], r["offset"], r["length"]).convert("RGB")
            sheet.paste(img.resize((thumb, thumb)), (x * thumb, top + label))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return atomic_write(Path(out), lambda fh: fh.write(buf.getvalue()))
