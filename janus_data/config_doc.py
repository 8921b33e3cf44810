"""docs/configuration.md, generated from the config dataclasses and their field docstrings.

python -m janus_data.config_doc > docs/configuration.md
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import typing

from janus_data.config import JanusRunConfig, load_config, preset_names, to_dict


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each field of a dataclass (attribute docstrings), its dataclass bases' too."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs |= _own_field_docs(base)
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in itertools.pairwise(body):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def cell(text: str) -> str:
    """Text as one Markdown table cell: a bare `|` (as in `str | None`) would start a new column."""
    return text.replace("|", "\\|")


def _sections(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    out = [(prefix, cls)]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _sections(hints[f.name], f"{prefix}{f.name}.")
    return out


def render() -> str:
    """The whole configuration reference as Markdown."""
    presets = {name: to_dict(load_config(name)) for name in preset_names()}
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config dataclasses (`janus_data/config_stages.py`, `janus_data/config_train.py`)",
        "by `python -m janus_data.config_doc`; do not edit by hand.",
        "A config is a preset (`--config tiny|paper`) or a YAML file (which may start with",
        "`preset: NAME`), then CLI flags. Unknown keys are errors.",
        "",
    ]
    for prefix, cls in _sections(JanusRunConfig):
        if prefix == "":
            continue
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        lines += [f"## `{prefix.rstrip('.')}`", "", (cls.__doc__ or "").strip(), ""]
        header = "| key | type | " + " | ".join(presets) + " | meaning |"
        lines += [header, "|" + "---|" * (3 + len(presets))]
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            values = []
            for data in presets.values():
                node = data
                for part in f"{prefix}{f.name}".split("."):
                    node = node[part]
                values.append(f"`{node}`")
            tname = getattr(hints[f.name], "__name__", str(hints[f.name]).replace("typing.", ""))
            cells = [f"`{f.name}`", tname, *values, docs.get(f.name, "")]
            lines.append("| " + " | ".join(map(cell, cells)) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
