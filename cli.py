"""The `janus` command line: parse, build a config, call one library function, print a summary."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

# Polars allocates through jemalloc, which by default keeps freed pages for seconds: a stage that
# builds large frames one after another (filter at 3.6M rows) then holds ~20% more memory than it
# uses. Returning pages at once costs little here. Read when polars loads, so set before that.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")

import typer

from janus_data.errors import JanusError, one_line
from janus_data.progress import console, quiet_libraries

app = typer.Typer(
    name="janus",
    help="Janus-Pro-R1 data pipeline and trainer: synthesize, judge, filter, SFT, GRPO.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Data stages: synth -> score -> filter.", no_args_is_help=True)
models_app = typer.Typer(help="Model utilities (tiny random models for tests and the demo).", no_args_is_help=True)
serve_app = typer.Typer(help="Servers: the judge behind an OpenAI-compatible API.", no_args_is_help=True)
train_app = typer.Typer(help="Training: SFT on the filter's shards, then GRPO.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
app.add_typer(serve_app, name="serve")

F = TypeVar("F", bound=Callable[..., Any])

# Shared option aliases.
RunOpt = Annotated[
    Path, typer.Option("--run", "--run-dir", help="Run directory (created if missing); --run-dir under torchrun.")
]
ConfigOpt = Annotated[
    str, typer.Option("--config", "-c", help="Preset name (tiny, paper) or a YAML file over the typed configs.")
]
RankOpt = Annotated[int | None, typer.Option(help="This process's rank [default: RANK or SLURM_PROCID, else 0].")]
WorldOpt = Annotated[
    int | None, typer.Option(help="Number of processes [default: WORLD_SIZE or SLURM_NTASKS, else 1].")
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


def user_errors(fn: F) -> F:
    """Print JanusError as one line and exit 2; JANUS_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(os.environ.get("JANUS_DEBUG"))
        try:
            return fn(*args, **kwargs)
        except JanusError as err:
            if debug:
                raise
            console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted:[/] finished batches are kept; rerun the same command to resume")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as err:  # last line of defence: one line, not a traceback
            if debug:
                raise
            console.print(
                f"[bold red]error:[/] {type(err).__name__}: {one_line(err)} (rerun with JANUS_DEBUG=1 for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def print_synth(result) -> None:
    """The synth stage's headline and summary table."""
    from janus_data.summaries import synth_headline, synth_table

    headline = synth_headline(result)
    if headline:
        console.print(headline, highlight=False)
    console.print(synth_table(result))


def _synth_overrides(**flags: Any) -> dict[str, Any]:
    return {"synth": {k: v for k, v in flags.items() if v is not None}}


@data_app.command("synth")
@user_errors
def synth(
    run: RunOpt,
    prompts: Annotated[
        Path | None,
        typer.Option(help="Prompt file: .jsonl, .txt, .parquet, .csv or a saved `datasets` directory."),
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

    Example: janus data synth --prompts manifests/demo_prompts.jsonl --run runs/demo --config tiny
    """
    quiet_libraries()
    from janus_data.config import load_config
    from janus_data.dist import resolve_shard
    from janus_data.synth import run_synth

    cfg = load_config(
        config,
        _synth_overrides(
            images_per_prompt=images_per_prompt,
            flux_share=flux_share,
            image_size=image_size,
            image_format=image_format,
            seed=seed,
        ),
    )
    shard = resolve_shard(rank, world_size)
    result = run_synth(run, cfg, prompts, shard, progress=None if progress else False)
    print_synth(result)


def print_score(result) -> None:
    """The score stage's headline, summary table and S histogram."""
    from janus_data.summaries import score_headline, score_histogram, score_table

    headline = score_headline(result)
    if headline:
        console.print(headline, highlight=False)
    console.print(score_table(result))
    if result.histogram.height:
        console.print(score_histogram(result))


@data_app.command("score")
@user_errors
def score(
    run: RunOpt,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Preset or YAML file [default: the run's own config.yaml, else paper]."),
    ] = None,
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
        bool | None,
        typer.Option(
            "--retry-errors/--keep-errors", help="Judge again the images an earlier run left with an error row."
        ),
    ] = None,
    rank: RankOpt = None,
    world_size: WorldOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Give every image of the run a consistency score S and a short reason (resumable, shardable).

    Example: janus data score --run runs/r1 --endpoint http://gpu1:23333 --endpoint http://gpu2:23333
    """
    quiet_libraries()
    from janus_data.dist import resolve_shard
    from janus_data.rundir import load_run_config
    from janus_data.score import run_score

    flags = {"backend": backend, "model": model, "batch_size": batch_size}
    flags |= {"concurrency": concurrency, "reason_tokens": reason_tokens, "retry_errors": retry_errors}
    if endpoint:
        flags["endpoints"] = list(endpoint)
        flags["backend"] = backend or "lmdeploy"
    cfg = load_run_config(run, config, {"score": {k: v for k, v in flags.items() if v is not None}})
    result = run_score(run, cfg, resolve_shard(rank, world_size), progress=None if progress else False)
    print_score(result)


def print_filter(result) -> None:
    """The filter stage's headline and summary table."""
    from janus_data.summaries import filter_headline, filter_table

    headline = filter_headline(result)
    if headline:
        console.print(headline, highlight=False)
    console.print(filter_table(result))


@data_app.command("filter")
@user_errors
def filter_(
    run: RunOpt,
    threshold: Annotated[float | None, typer.Option(help="Good images have S >= threshold [preset: 0.8].")] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Preset or YAML file [default: the run's own config.yaml, else paper]."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the choice among candidates.")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Build the SFT sub-tasks (text->image, self-evaluation, regeneration) as WebDataset shards.

    Example: janus data filter --run runs/r1 --threshold 0.8
    """
    quiet_libraries()
    from janus_data.filter import run_filter
    from janus_data.rundir import load_run_config

    flags = {k: v for k, v in {"threshold": threshold, "seed": seed}.items() if v is not None}
    cfg = load_run_config(run, config, {"filter": flags})
    print_filter(run_filter(run, cfg, progress=None if progress else False))


def print_sft(result) -> None:
    """The SFT run's summary table (process 0 only under torchrun)."""
    from janus_train.summary import sft_table

    if result.rank == 0:
        console.print(sft_table(result))


@train_app.command("sft")
@user_errors
def train_sft(
    run: RunOpt,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Preset or YAML file [default: the run's own config.yaml, else paper]."),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Train up to this step [config: sft.max_steps].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's latest SFT checkpoint.")] = False,
    progress: ProgressOpt = True,
) -> None:
    """Mixed sub-task SFT of Janus-Pro (text->image, self-evaluation, regeneration) on the shards.

    Example: torchrun --nproc-per-node 8 --no-python janus train sft --run-dir runs/r1
    """
    quiet_libraries()
    from janus_data.rundir import load_run_config
    from janus_train.sft import run_sft

    cfg = load_run_config(run, config, {})
    print_sft(run_sft(run, cfg, max_steps=max_steps, resume=resume, progress=None if progress else False))


def print_rl(result) -> None:
    """The GRPO run's summary table (process 0 only under torchrun)."""
    from janus_train.summary import rl_table

    if result.rank == 0:
        console.print(rl_table(result))


@train_app.command("rl")
@user_errors
def train_rl(
    run: RunOpt,
    init: Annotated[
        str | None,
        typer.Option(help="Policy to start from [config: rl.model; default: the run's latest SFT checkpoint]."),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Preset or YAML file [default: the run's own config.yaml, else paper]."),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Train up to this step [config: rl.max_steps].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's latest RL checkpoint.")] = False,
    endpoint: Annotated[
        list[str] | None,
        typer.Option(help="Judge server base URL (repeatable); sets score.backend to lmdeploy."),
    ] = None,
    progress: ProgressOpt = True,
) -> None:
    """GRPO with introspective rollouts (draw, judge yourself, redraw) and dual-layer judge rewards.

    Example: torchrun --nproc-per-node 8 --no-python janus train rl --run-dir runs/r1 --endpoint http://judge:23333
    """
    quiet_libraries()
    from janus_data.rundir import load_run_config
    from janus_train.grpo import run_rl

    overrides = {"score": {"backend": "lmdeploy", "endpoints": list(endpoint)}} if endpoint else {}
    cfg = load_run_config(run, config, overrides)
    result = run_rl(run, cfg, init=init, max_steps=max_steps, resume=resume, progress=None if progress else False)
    print_rl(result)


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
        str | None,
        typer.Option(
            help="pytorch engine: raw_logprobs or raw_logits; unset, logprobs requests get a 400 as in LMDeploy."
        ),
    ] = None,
    generation_config: Annotated[
        str,
        typer.Option(
            help="Server sampling defaults: auto (the model's generation_config), lmdeploy (none), or a path."
        ),
    ] = "auto",
    session_len: Annotated[
        int | None, typer.Option(help="Longest prompt plus answer in tokens; longer prompts get LMDeploy's 400.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    max_batch: Annotated[int, typer.Option(help="Most requests answered in one forward batch.")] = 16,
    max_tiles: Annotated[int, typer.Option(help="448 px tiles per image (plus a thumbnail).")] = 12,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable with the API key clients must send (unset: no key).")
    ] = "JANUS_JUDGE_API_KEY",
    trust_remote_code: Annotated[bool, typer.Option(help="Allow checkpoint code. Off unless you trust it.")] = False,
) -> None:
    """Serve an InternVL judge as LMDeploy 0.18's api_server does (a stand-in for CPUs, tests, -hf checkpoints).

    Example: janus serve judge --model tiny:internvl --engine pytorch --logprobs-mode raw_logprobs
    """
    from janus_data.errors import ConfigError
    from janus_data.judge.engines import ENGINES, LOGPROBS_MODES

    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, not '{engine}'", hint="pick one")
    if logprobs_mode is not None and (engine != "pytorch" or logprobs_mode not in LOGPROBS_MODES):
        raise ConfigError(
            f"--logprobs-mode {logprobs_mode} is not valid here",
            hint=f"it takes {' or '.join(LOGPROBS_MODES)}, with --engine pytorch (TurboMind always returns logprobs)",
        )
    quiet_libraries()
    from janus_data.config import RuntimeConfig
    from janus_data.judge.hf import HFJudge
    from janus_data.judge.server import JudgeServer, generation_defaults
    from janus_data.models import resolve_device, resolve_dtype

    runtime = RuntimeConfig(device=device)
    dev = resolve_device(runtime)
    judge = HFJudge(model, dev, resolve_dtype(runtime, dev), max_tiles=max_tiles, trust_remote_code=trust_remote_code)
    server = JudgeServer(
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
    key = f"clients must send the key in ${api_key_env}" if server.api_key else "no API key"
    mode = f"{engine} engine" + (f", --logprobs-mode {logprobs_mode}" if logprobs_mode else "")
    console.print(
        f"serving judge '{server.model_name}' at {server.url}/v1 ({mode}; {key}); Ctrl-C stops", highlight=False
    )
    server.serve_forever()


@models_app.command("tiny")
@user_errors
def models_tiny(
    name: Annotated[str, typer.Argument(help="janus, flux or internvl.")],
    out: Annotated[Path | None, typer.Option(help="Directory to save to [default: the tiny-model cache].")] = None,
    seed: Annotated[int, typer.Option(help="Weight seed.")] = 0,
) -> None:
    """Build a tiny random model from the real config classes and save it with save_pretrained.

    Example: janus models tiny janus --out /tmp/tiny-janus
    """
    quiet_libraries()
    from janus_data import models

    if out is None:
        path = models.tiny_model_path(name)
    else:
        if name not in models.TINY_MODELS:
            raise JanusError(
                f"unknown tiny model '{name}'", hint=f"choose from {', '.join(sorted(models.TINY_MODELS))}"
            )
        build = models.tiny_builder(name)
        path = build(out) if seed == 0 else build(out, seed)
    console.print(f"tiny {name}: {path}")


STAGE_HELP = "synth, score, filter, sft or rl"


def _complete_stage(incomplete: str) -> list[str]:
    return [s for s in ("synth", "score", "filter", "sft", "rl") if s.startswith(incomplete)]


def _stage_printer() -> Callable[[Any], None]:
    """Print each stage's summary as `janus run` finishes it (or says it was already complete)."""
    printers = {"synth": print_synth, "score": print_score, "filter": print_filter, "sft": print_sft, "rl": print_rl}

    def show(outcome) -> None:
        if outcome.status == "skipped":
            console.print(f"[dim]skip {outcome.stage}: already complete with these inputs[/]", highlight=False)
        else:
            printers[outcome.stage](outcome.result)

    return show


def _outputs_table(run: Path, outcomes, report: Path | None):
    """What the chain produced and where."""
    from rich import box
    from rich.table import Table

    where = {
        "synth": "manifests/images, images/",
        "score": "manifests/scores",
        "filter": "sft/{t2i,judge,regen}/*.tar, manifests/samples",
        "sft": "checkpoints/sft",
        "rl": "checkpoints/rl",
    }
    table = Table(title=f"janus run — {run}", title_justify="left", box=box.SIMPLE)
    for col in ("stage", "status", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left", no_wrap=True, min_width=7)
    table.add_column("outputs", overflow="fold")
    for o in outcomes:
        table.add_row(o.stage, o.status, f"{o.seconds:.1f}" if o.status == "ran" else "-", f"{run}/{where[o.stage]}")
    if report is not None:
        table.caption = f"report: {report}"
        table.caption_justify = "left"
    return table


@app.command("run")
@user_errors
def run_chain(
    config: Annotated[str, typer.Option("--config", "-c", help="Preset or YAML file with a section per stage.")],
    run: Annotated[
        Path | None, typer.Option("--run", "--run-dir", help="Run directory [config: pipeline.run_dir].")
    ] = None,
    prompts: Annotated[Path | None, typer.Option(help="Prompt file for synth [config: pipeline.prompts].")] = None,
    start: Annotated[
        str | None, typer.Option("--from", help=f"First stage: {STAGE_HELP}.", autocompletion=_complete_stage)
    ] = None,
    stop: Annotated[
        str | None, typer.Option("--to", help=f"Last stage: {STAGE_HELP}.", autocompletion=_complete_stage)
    ] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the HTML report at the end.")] = True,
    progress: ProgressOpt = True,
) -> None:
    """Run synth -> score -> filter -> sft -> rl from one config; stages already complete are skipped.

    Kill it at any moment and run the same command again: it goes on where it stopped.
    Example: janus run --config my_run.yaml --run runs/r1 --prompts prompts.jsonl --to filter
    """
    quiet_libraries()
    from janus_data.config import load_config
    from janus_data.errors import ConfigError
    from janus_train.pipeline import run_pipeline

    cfg = load_config(config)
    run_dir = run or (Path(cfg.pipeline.run_dir) if cfg.pipeline.run_dir else None)
    if run_dir is None:
        raise ConfigError("no run directory", hint="pass --run DIR or set pipeline.run_dir in the config")
    prompt_file = prompts or (Path(cfg.pipeline.prompts) if cfg.pipeline.prompts else None)
    hint = f"janus run --config {config} --run {run_dir}"
    outcomes = run_pipeline(
        run_dir,
        cfg,
        prompt_file,
        start,
        stop,
        progress=None if progress else False,
        on_stage=_stage_printer(),
        resume_hint=hint,
    )
    path = _write_report(run_dir) if report else None
    console.print(_outputs_table(run_dir, outcomes, path))


def _write_report(run: Path) -> Path:
    from janus_data.report import build_report

    return build_report(run).path


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
    from janus_data.report import build_report, report_table

    result = build_report(run, out, prompts_shown=prompts_shown)
    console.print(report_table(result))


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
    from janus_data.config import PROJECT_ROOT, load_config
    from janus_data.contact import contact_sheet
    from janus_train.pipeline import run_pipeline

    prompts = PROJECT_ROOT / "manifests" / "demo_prompts.jsonl"
    note = "tiny random models on CPU: they demonstrate the mechanics, not image quality"
    console.print(f"[bold]janus demo[/]: {note}.")
    outcomes = run_pipeline(
        run,
        load_config("tiny"),
        prompts,
        progress=None if progress else False,
        on_stage=_stage_printer(),
        resume_hint=f"janus demo --run {run}",
    )
    sheet = contact_sheet(run, run / "contact_sheet.png")
    report = _write_report(run)
    console.print(_outputs_table(run, outcomes, None))
    console.print(
        f"contact sheet: {sheet}\nreport: {report}  (open it in a browser)\n"
        f"inspect: python -c \"import polars as pl; print(pl.read_parquet('{run}/manifests/samples/samples.parquet'))\"\n"
        f"[bold]Remember[/]: {note}.",
        highlight=False,
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
