"""`anatomist spd|apd|l3d|bilinear ...`: short aliases of `anatomist run spd-toy|apd-toy|l3d-toy|spd-lm-mlp|bilinear`.

Every `run` command has the same shape, and goes through `cli.run.invoke` like `anatomist run`:

    anatomist <method> run --toy NAME [--steps N] [--seed S] [--config experiments/x.yaml] --out DIR [--json]

`--config` is an experiment YAML (its `kind:` may be left out); `--toy` replaces its toy, `--steps` and
`--seed` go into the method's section (e.g. `spd.steps`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anatomist.cli.output import emit
from anatomist.cli.run import invoke
from anatomist.core.config import read_yaml_mapping
from anatomist.core.errors import AnatomistError
from anatomist.runs.base import CONFIG
from anatomist.runs.lm_mlp import score_lm_mlp_checkpoint
from anatomist.runs.mechanisms import score_spd_checkpoint

spd_app = typer.Typer(help="Stochastic Parameter Decomposition (SPD).", no_args_is_help=True)
apd_app = typer.Typer(help="Attribution-based Parameter Decomposition (APD).", no_args_is_help=True)
l3d_app = typer.Typer(help="Local Loss Landscape Decomposition (L3D).", no_args_is_help=True)
bilinear_app = typer.Typer(help="Bilinear layers: interaction matrices and their eigenvectors.", no_args_is_help=True)

# option types shared by every method's `run`
Toy = Annotated[str | None, typer.Option(help="toy to decompose, e.g. tms-5-2 (default: the config's)")]
Steps = Annotated[int | None, typer.Option(help="optimizer steps (default: the config's)")]
Seed = Annotated[int | None, typer.Option(help="seed of the decomposition (default: the config's)")]

# each method's --config names an experiment of that method as its example
SPDConfigFile = Annotated[
    Path | None, typer.Option("--config", help="experiment YAML, e.g. experiments/spd_tms_5_2.yaml")]
APDConfigFile = Annotated[
    Path | None, typer.Option("--config", help="experiment YAML, e.g. experiments/apd_tms_5_2.yaml")]
L3DConfigFile = Annotated[
    Path | None, typer.Option("--config", help="experiment YAML, e.g. experiments/l3d_tms_5_2.yaml")]
Out = Annotated[Path, typer.Option(help="run folder to write")]
Resume = Annotated[bool, typer.Option(help="continue from the newest checkpoint in --out")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON object")]
Threads = Annotated[
    int, typer.Option(help="CPU threads for torch (0: torch's default); 1 is fastest on a busy shared machine")
]


def method_target(config: Path | None, kind: str, toy: str | None) -> str:
    """What `anatomist run` loads for a method's alias: the experiment file, or the kind's defaults."""
    if config is None:
        return kind
    in_file = read_yaml_mapping(config).get("toy")
    if toy is not None and in_file is not None and in_file != toy:
        raise AnatomistError(f"--toy {toy} contradicts {config} (toy: {in_file}); give one of them")
    return str(config)


def run_method(kind: str, section: str, out: Path, toy: str | None, steps: int | None, seed: int | None,
               config: Path | None, resume: bool, threads: int, as_json: bool) -> None:
    """`anatomist run CONFIG --set kind=KIND --set toy=... --set <section>.steps=... --set <section>.seed=...`."""
    if threads < 0:
        raise AnatomistError(f"--threads must be ≥ 0, got {threads}")
    extra = {"kind": kind, "toy": toy, f"{section}.steps": steps, f"{section}.seed": seed}
    invoke(method_target(config, kind, toy), [], out, resume=resume, threads=threads, as_json=as_json, extra=extra)


@spd_app.command("run")
def spd_run(out: Out, toy: Toy = None, steps: Steps = None, seed: Seed = None, config: SPDConfigFile = None,
            resume: Resume = False, threads: Threads = 0, as_json: AsJson = False) -> None:
    """Fit SPD to a toy and report MMCS/ML2R (initial and final), CI L0, alive components, identity pattern."""
    run_method("spd-toy", "spd", out, toy, steps, seed, config, resume, threads, as_json)


@spd_app.command("score")
def spd_score(
    run: Annotated[Path, typer.Argument(help="run folder of `anatomist spd run` or `spd lm-mlp` (may be training)")],
    step: Annotated[int | None, typer.Option(help="checkpoint step to score (default: the newest)")] = None,
    as_json: AsJson = False,
) -> None:
    """Score a checkpoint as the run's own report would: a toy run's MMCS/ML2R, CI L0, alive components and
    identity pattern; an `spd lm-mlp` run's held-out KLs (CI masks, stochastic, all on, ablated), CI L0, alive."""
    is_lm_mlp = (run / CONFIG).is_file() and read_yaml_mapping(run / CONFIG).get("kind") == "spd-lm-mlp"
    emit(score_lm_mlp_checkpoint(run, step) if is_lm_mlp else score_spd_checkpoint(run, step), as_json)


@spd_app.command("lm-mlp")
def spd_lm_mlp(
    out: Out,
    layer: Annotated[
        int | None, typer.Option(help="decoder layer whose MLP is decomposed (-1: the last; default: the config's)")
    ] = None,
    steps: Steps = None,
    seed: Seed = None,
    config: Annotated[Path | None, typer.Option("--config", help="spd-lm-mlp config YAML")] = None,
    resume: Resume = False,
    threads: Threads = 0,
    as_json: AsJson = False,
) -> None:
    """SPD on SmolLM2's MLP (gate/up/down) with the KL objective: alive components and KL of the masked model."""
    extra = {"kind": "spd-lm-mlp", "layer": layer, "spd.steps": steps, "spd.seed": seed}
    target = method_target(config, "spd-lm-mlp", None)
    invoke(target, [], out, resume=resume, threads=threads, as_json=as_json, extra=extra)


@apd_app.command("run")
def apd_run(out: Out, toy: Toy = None, steps: Steps = None, seed: Seed = None, config: APDConfigFile = None,
            resume: Resume = False, threads: Threads = 0, as_json: AsJson = False) -> None:
    """Fit APD to a toy and report MMCS/ML2R (initial and final), attribution L0, steps/s."""
    run_method("apd-toy", "apd", out, toy, steps, seed, config, resume, threads, as_json)


@l3d_app.command("run")
def l3d_run(out: Out, toy: Toy = None, steps: Steps = None, seed: Seed = None, config: L3DConfigFile = None,
            resume: Resume = False, threads: Threads = 0, as_json: AsJson = False) -> None:
    """Fit L3D to a toy and report MMCS of its subnetworks (initial and final) against the true mechanisms."""
    run_method("l3d-toy", "l3d", out, toy, steps, seed, config, resume, threads, as_json)


@bilinear_app.callback()
def _group() -> None:
    """Bilinear layers: interaction matrices and their eigenvectors."""  # keeps `mnist` a sub-command


@bilinear_app.command()
def mnist(
    out: Annotated[Path, typer.Option(help="output folder (eigenvectors.png, truncation.png, metrics.json)")],
    steps: Annotated[int | None, typer.Option(help="training steps of the toy (default: its recipe, 1000)")] = None,
    seed: Annotated[int, typer.Option(help="training seed of the toy")] = 0,
    input_noise: Annotated[
        float | None, typer.Option(help="σ of the training pixel noise (default: the recipe's 0.33)")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Per-digit eigenvectors of the bilinear MNIST toy, and accuracy keeping only the top n per digit."""
    invoke("bilinear", [], out, as_json=as_json, extra={"steps": steps, "seed": seed, "input_noise": input_noise})
