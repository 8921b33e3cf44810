"""The `janus` command line: parse, build a config, call one library function, print a summary.

Command groups with a module of their own live in `janus_cli/` (`train`), with what every
command shares (`janus_cli.common`: option aliases, one-line errors, printing).

Before a command calls the library it imports only typer, rich and the light janus modules; the
library checks the inputs first (`janus_run.stages`), then imports torch, polars and the model
libraries, so a bad flag, file or config fails in about the time `janus --help` takes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

# Polars allocates through jemalloc, which by default keeps freed pages for seconds: a stage that
# builds large frames one after another (filter at 3.6M rows) then holds ~20% more memory than it
# uses. Returning pages at once costs little here. Read when polars loads, so set before that.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")

import typer

from janus_cli.common import (
    ConfigOpt,
    ProgressOpt,
    RankOpt,
    RunConfigOpt,
    RunOpt,
    WorldOpt,
    bars,
    section,
    show,
    show_outcome,
    show_stage,
    user_errors,
)
from janus_cli.eval import eval_app
from janus_cli.generate import generate
from janus_cli.train import train_app
from janus_data.judge.serve import API_KEY_ENV
from janus_data.progress import console, quiet_libraries
from janus_run.stages import STAGES

app = typer.Typer(
    name="janus",
    help="Janus-Pro-R1 data pipeline and trainer: synthesize, judge, filter, SFT, GRPO.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Data stages: synth -> score -> filter.", no_args_is_help=True)
models_app = typer.Typer(help="Model utilities (tiny random models for tests and the demo).", no_args_is_help=True)
serve_app = typer.Typer(help="Servers: the judge behind an OpenAI-compatible API.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
app.add_typer(serve_app, name="serve")
app.add_typer(eval_app, name="eval")
app.command("generate")(generate)

STAGE_HELP = f"{', '.join(STAGES[:-1])} or {STAGES[-1]}"
TaskOpt = Annotated[str, typer.Option(help="t2i (text-to-image candidates) or edit (instruction edits, docs/edit.md).")]


@data_app.command("synth")
@user_errors
def synth(
    run: RunOpt,
    prompts: Annotated[
        Path | None,
        typer.Option(help="Prompt file: .jsonl, .txt, .parquet, .csv or a saved `datasets` directory."),
    ] = None,
    task: TaskOpt = "t2i",
    edits: Annotated[
        Path | None,
        typer.Option(
            help="Edit source for --task edit: .jsonl, .parquet, .tar (or a folder of them), a `datasets` dir."
        ),
    ] = None,
    config: ConfigOpt = "paper",
    images_per_prompt: Annotated[int | None, typer.Option(help="Candidates per prompt [preset: 18].")] = None,
    flux_share: Annotated[float | None, typer.Option(help="Share drawn by FLUX [preset: 0.5].")] = None,
    image_size: Annotated[int | None, typer.Option(help="Stored image size in px [preset: 384].")] = None,
    image_format: Annotated[str | None, typer.Option(help="png, jpeg or webp.")] = None,
    seed: Annotated[int | None, typer.Option(help="Global seed.")] = None,
    rank: RankOpt = None,
    world_size: WorldOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Generate each prompt's candidate images with FLUX and Janus-Pro (resumable, shardable).

    Example: janus data synth --prompts janus_data/assets/demo_prompts.jsonl --run runs/demo --config tiny
    Edits: janus data synth --task edit --edits edits.jsonl --run runs/demo --config tiny
    """
    quiet_libraries()
    from janus_data.config import load_config
    from janus_data.dist import resolve_shard
    from janus_run import stages

    flags = {"images_per_prompt": images_per_prompt, "flux_share": flux_share, "image_size": image_size}
    cfg = load_config(config, section("synth", **flags, image_format=image_format, seed=seed))
    shard = resolve_shard(rank, world_size)
    result = stages.synth(run, cfg, prompts, shard, progress=bars(progress), task=task, edits=edits)
    show_stage("synth", result)


@data_app.command("score")
@user_errors
def score(
    run: RunOpt,
    task: TaskOpt = "t2i",
    config: RunConfigOpt = None,
    backend: Annotated[str | None, typer.Option(help="hf (in process) or lmdeploy (judge servers).")] = None,
    endpoint: Annotated[
        list[str] | None,
        typer.Option("--endpoint", help="Judge server base URL; repeat for several (implies --backend lmdeploy)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="hf: judge checkpoint; lmdeploy: served model name [default: asked].")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch and manifest part.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="lmdeploy: requests in flight per endpoint.")] = None,
    reason_tokens: Annotated[int | None, typer.Option(help="Most tokens of each reason (0: S only).")] = None,
    retry_errors: Annotated[
        bool | None, typer.Option("--retry-errors/--keep-errors", help="Judge again the images left with an error row.")
    ] = None,
    rank: RankOpt = None,
    world_size: WorldOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Give every image of the run a consistency score S and a short reason (resumable, shardable).

    Example: janus data score --run runs/r1 --endpoint http://gpu1:23333 --endpoint http://gpu2:23333
    Edits (S_flw, S_psv, R): janus data score --task edit --run runs/r1
    """
    quiet_libraries()
    from janus_data.dist import resolve_shard
    from janus_data.rundir import load_run_config
    from janus_run import stages

    flags = {"backend": backend, "model": model, "batch_size": batch_size, "concurrency": concurrency}
    flags |= {"reason_tokens": reason_tokens, "retry_errors": retry_errors}
    if endpoint:
        flags |= {"endpoints": list(endpoint), "backend": backend or "lmdeploy"}
    cfg = load_run_config(run, config, section("score", **flags))
    shard = resolve_shard(rank, world_size)
    show_stage("score", stages.score(run, cfg, shard, progress=bars(progress), task=task))


@data_app.command("filter")
@user_errors
def filter_(
    run: RunOpt,
    threshold: Annotated[
        float | None,
        typer.Option(help="Good images have S >= threshold [preset: 0.8]; with --task edit: edit.threshold."),
    ] = None,
    config: RunConfigOpt = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the choice among candidates.")] = None,
    task: TaskOpt = "t2i",
    progress: ProgressOpt = True,
) -> None:
    """Build the SFT sub-tasks (text->image, self-evaluation, regeneration) as WebDataset shards.

    Example: janus data filter --run runs/r1 --threshold 0.8
    Edits (edit, edit_judge, edit_regen in <run>/sft_edit): janus data filter --task edit --run runs/r1
    """
    quiet_libraries()
    from janus_data.rundir import load_run_config
    from janus_run import stages

    overrides = section("filter", seed=seed)
    if task == "edit":  # an edit's q = R / (reward_flw + reward_psv) has its own threshold
        overrides |= section("edit", threshold=threshold)
    else:
        overrides["filter"] |= section("filter", threshold=threshold)["filter"]
    cfg = load_run_config(run, config, overrides)
    show_stage("filter", stages.filter_(run, cfg, progress=bars(progress), task=task))


@serve_app.command("judge")
@user_errors
def serve_judge(
    model: Annotated[str, typer.Option(help="InternVL checkpoint (transformers format) or tiny:internvl.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (LMDeploy's default is 23333).")] = 23333,
    model_name: Annotated[
        str | None, typer.Option(help="Name clients use in 'model' [default: --model], as LMDeploy's --model-name.")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="Which LMDeploy engine to behave as: turbomind (its default) or pytorch.")
    ] = "turbomind",
    logprobs_mode: Annotated[
        str | None, typer.Option(help="pytorch engine: raw_logprobs or raw_logits; unset, logprobs requests get a 400.")
    ] = None,
    generation_config: Annotated[
        str, typer.Option(help="Sampling defaults: auto (the model's generation_config), lmdeploy (none) or a path.")
    ] = "auto",
    session_len: Annotated[
        int | None, typer.Option(help="Longest prompt plus answer in tokens; longer prompts get LMDeploy's 400.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    max_batch: Annotated[int, typer.Option(help="Most requests answered in one forward batch.")] = 16,
    max_tiles: Annotated[int, typer.Option(help="448 px tiles per image (plus a thumbnail).")] = 12,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable with the API key clients must send (unset: no key).")
    ] = API_KEY_ENV,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow checkpoint code. Off unless you trust it.")] = False,
) -> None:
    """Serve an InternVL judge as LMDeploy 0.18's api_server does (a stand-in for CPUs, tests, -hf checkpoints).

    Example: janus serve judge --model tiny:internvl --engine pytorch --logprobs-mode raw_logprobs
    """
    quiet_libraries()
    from janus_data.judge.serve import serving_line, start_judge_server

    server = start_judge_server(
        model,
        host=host,
        port=port,
        model_name=model_name,
        engine=engine,
        logprobs_mode=logprobs_mode,
        generation_config=generation_config,
        session_len=session_len,
        device=device,
        max_batch=max_batch,
        max_tiles=max_tiles,
        api_key_env=api_key_env,
        trust_remote_code=trust_remote_code,
    )
    show(serving_line(server, api_key_env))
    server.serve_forever()


@models_app.command("tiny")
@user_errors
def models_tiny(
    name: Annotated[str, typer.Argument(help="janus, flux, kontext, internvl, mask2former or clip.")],
    out: Annotated[Path | None, typer.Option(help="Directory to save to [default: the tiny-model cache].")] = None,
    seed: Annotated[int, typer.Option(help="Weight seed.")] = 0,
) -> None:
    """Build a tiny random model from the real config classes and save it with save_pretrained.

    Example: janus models tiny janus --out /tmp/tiny-janus
    """
    quiet_libraries()
    from janus_data.models import build_tiny

    console.print(f"tiny {name}: {build_tiny(name, out, seed)}")


def _complete_stage(incomplete: str) -> list[str]:
    return [s for s in STAGES if s.startswith(incomplete)]


@app.command("run")
@user_errors
def chain(
    config: Annotated[str, typer.Option("--config", "-c", help="Preset or YAML file with a section per stage.")],
    run: Annotated[
        Path | None, typer.Option("--run", "--run-dir", help="Run directory [config: pipeline.run_dir].")
    ] = None,
    prompts: Annotated[Path | None, typer.Option(help="Prompt file for synth [config: pipeline.prompts].")] = None,
    edits: Annotated[
        Path | None,
        typer.Option(help="Edit source: synth, score and filter also run on edits [config: pipeline.edits]."),
    ] = None,
    start: Annotated[
        str | None, typer.Option("--from", help=f"First stage: {STAGE_HELP}.", autocompletion=_complete_stage)
    ] = None,
    stop: Annotated[
        str | None, typer.Option("--to", help=f"Last stage: {STAGE_HELP}.", autocompletion=_complete_stage)
    ] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the HTML report at the end.")] = True,
    progress: ProgressOpt = True,
) -> None:
    """Run synth -> score -> filter -> sft -> rl -> eval from one config; stages already complete are skipped.

    Kill it at any moment and run the same command again: it goes on where it stopped.
    Example: janus run --config my_run.yaml --run runs/r1 --prompts prompts.jsonl --to filter
    With edits: janus run --config my_run.yaml --run runs/r1 --prompts prompts.jsonl --edits edits.jsonl
    """
    quiet_libraries()
    from janus_data.config import load_config
    from janus_run.pipeline import run_chain
    from janus_run.summary import outputs_table

    cfg = load_config(config)
    result = run_chain(
        cfg, config, run, prompts, start, stop, report, bars(progress), on_stage=show_outcome, edits=edits
    )
    show(outputs_table(result.run_dir, result.outcomes, result.report))


@data_app.command("report")
@user_errors
def data_report(
    run: RunOpt,
    out: Annotated[Path | None, typer.Option(help="Report directory [default: <run>/report].")] = None,
    prompts_shown: Annotated[int, typer.Option(help="Prompts with best/worst image sheets.")] = 6,
) -> None:
    """Write a self-contained HTML report of a run: S histograms, pass rates, samples, SFT and GRPO curves.

    Example: janus data report --run runs/demo   (then open runs/demo/report/index.html)
    """
    quiet_libraries()
    from janus_run import stages

    show_stage("report", stages.report(run, out, prompts_shown=prompts_shown))


@app.command("demo")
@user_errors
def demo(
    run: Annotated[Path, typer.Option("--run", help="Run directory for the demo.")] = Path("runs/demo"),
    progress: ProgressOpt = True,
) -> None:
    """Run every stage on the bundled prompts with tiny random models, on CPU, and write the report.

    Tiny random models demonstrate the mechanics, not image quality.
    Example: janus demo --run runs/demo
    """
    quiet_libraries()
    from janus_data.config import demo_prompts_path
    from janus_run.demo import NOTE, run_demo
    from janus_run.summary import outputs_table

    prompts = demo_prompts_path()
    console.print(f"[bold]janus demo[/]: {NOTE}.")
    result = run_demo(run, prompts, progress=bars(progress), on_stage=show_outcome)
    show(outputs_table(result.run_dir, result.outcomes), result.epilogue())


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
