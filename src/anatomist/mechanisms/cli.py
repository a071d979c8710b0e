"""`anatomist spd|apd|l3d run ...`: decompose a toy's parameters and print how well its mechanisms are recovered.

Three typer apps, mounted as top-level sub-commands in `anatomist.cli._mount()`:
`spd_app`, `apd_app`, `l3d_app`. Every `run` command has the same shape:

    anatomist <method> run --toy NAME [--steps N] [--seed S] [--config experiments/x.yaml] --out DIR [--json]

To add a method's command (APD, L3D): write it in the block for that method at the bottom of this
file. Load the experiment with `load_experiment(config, YourExperiment, toy=..., steps=..., seed=...)`
(CLI flags override the file; steps/seed go into the experiment's `<method>` sub-config), call your
library function that writes the run folder and returns metrics (like `run_spd_experiment`), and
finish with `print_metrics(metrics, as_json)`; take `threads: Threads = 0` and call `set_threads`.
Scoring and plots are shared: see `anatomist.mechanisms.toyrun` (`toy_report`, `write_toy_plots`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from anatomist.core.config import Config
from anatomist.core.errors import AnatomistError

spd_app = typer.Typer(help="Stochastic Parameter Decomposition (SPD).", no_args_is_help=True)
apd_app = typer.Typer(help="Attribution-based Parameter Decomposition (APD).", no_args_is_help=True)
l3d_app = typer.Typer(help="Local Loss Landscape Decomposition (L3D).", no_args_is_help=True)

E = TypeVar("E", bound=Config)

# option types shared by every method's `run`
Toy = Annotated[str | None, typer.Option(help="toy to decompose, e.g. tms-5-2 (default: the config's)")]
Steps = Annotated[int | None, typer.Option(help="optimizer steps (default: the config's)")]
Seed = Annotated[int | None, typer.Option(help="seed of the decomposition (default: the config's)")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="experiment YAML, e.g. experiments/spd_tms_5_2.yaml")]
Out = Annotated[Path, typer.Option(help="run folder to write")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON object")]
Threads = Annotated[
    int, typer.Option(help="CPU threads for torch (0: torch's default); 1 is fastest on a busy shared machine")
]


def set_threads(threads: int) -> None:
    if threads < 0:
        raise AnatomistError(f"--threads must be ≥ 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_experiment(
    path: Path | None, cls: type[E], method: str, toy: str | None, steps: int | None, seed: int | None
) -> E:
    """An experiment from YAML (or defaults), with the CLI's --toy/--steps/--seed laid over it."""
    exp = cls.from_yaml(path) if path is not None else cls()
    data = exp.model_dump()
    if toy is not None:
        if path is not None and data.get("toy") != toy:
            raise AnatomistError(f"--toy {toy} contradicts {path} (toy: {data.get('toy')}); give one of them")
        data["toy"] = toy
    for key, value in (("steps", steps), ("seed", seed)):
        if value is not None:
            data[method][key] = value
    return cls.parse(data, source=str(path) if path else "command line")


def print_metrics(metrics: dict[str, Any], as_json: bool) -> None:
    """One JSON object with --json; otherwise the headline numbers, one per line, then the per-layer table."""
    if as_json:
        print(json.dumps(metrics, default=str))
        return
    for k, v in metrics.items():
        if not isinstance(v, dict | list):
            print(f"{k:32s} {v:.6g}" if isinstance(v, float) else f"{k:32s} {v}")
    for name, row in metrics.get("layers", {}).items():
        print(
            f"  {name:30s} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )


# --- SPD -------------------------------------------------------------------------------------------


@spd_app.command("run")
def spd_run(
    out: Out,
    toy: Toy = None,
    steps: Steps = None,
    seed: Seed = None,
    config: ConfigFile = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest checkpoint in --out")] = False,
    threads: Threads = 0,
    as_json: AsJson = False,
) -> None:
    """Fit SPD to a toy and report MMCS/ML2R (initial and final), CI L0, alive components, identity pattern."""
    from anatomist.mechanisms.spd_toys import SPDExperiment, run_spd_experiment

    set_threads(threads)
    exp = load_experiment(config, SPDExperiment, "spd", toy, steps, seed)
    print_metrics(run_spd_experiment(exp, out, resume=resume), as_json)


@spd_app.command("score")
def spd_score(
    run: Annotated[Path, typer.Argument(help="run folder of `anatomist spd run` (it may still be training)")],
    step: Annotated[int | None, typer.Option(help="checkpoint step to score (default: the newest)")] = None,
    threads: Threads = 0,
    as_json: AsJson = False,
) -> None:
    """Score a checkpoint of a toy run: MMCS/ML2R, CI L0, alive components, identity pattern, as `run` reports them."""
    from anatomist.mechanisms.spd_toys import score_spd_checkpoint

    set_threads(threads)
    print_metrics(score_spd_checkpoint(run, step), as_json)


@spd_app.command("lm-mlp")
def spd_lm_mlp(
    out: Out,
    layer: Annotated[
        int | None, typer.Option(help="decoder layer whose MLP is decomposed (-1: the last; default: the config's)")
    ] = None,
    steps: Steps = None,
    seed: Seed = None,
    config: Annotated[Path | None, typer.Option("--config", help="LMMLPConfig YAML")] = None,
    threads: Threads = 0,
    as_json: AsJson = False,
) -> None:
    """SPD on SmolLM2's MLP (gate/up/down) with the KL objective: alive components and KL of the masked model."""
    from anatomist.mechanisms.lm_mlp import LMMLPConfig, run_lm_mlp

    set_threads(threads)
    exp = LMMLPConfig.from_yaml(config) if config is not None else LMMLPConfig()
    data = exp.model_dump()
    if layer is not None:
        data["layer"] = layer
    for key, value in (("steps", steps), ("seed", seed)):
        if value is not None:
            data["spd"][key] = value
    print_metrics(run_lm_mlp(LMMLPConfig.parse(data, source=str(config or "command line")), out), as_json)


# --- APD (apd-l3d adds its commands here) -----------------------------------------------------------


@apd_app.command("run")
def apd_run(
    out: Out,
    toy: Toy = None,
    steps: Steps = None,
    seed: Seed = None,
    config: ConfigFile = None,
    as_json: AsJson = False,
) -> None:
    """Fit APD to a toy and report MMCS/ML2R (initial and final), attribution L0, steps/s."""
    from anatomist.mechanisms.apd_l3d_toys import APDExperiment, run_apd_experiment

    exp = load_experiment(config, APDExperiment, "apd", toy, steps, seed)
    print_metrics(run_apd_experiment(exp, out), as_json)


# --- L3D (apd-l3d adds its commands here) -----------------------------------------------------------


@l3d_app.command("run")
def l3d_run(
    out: Out,
    toy: Toy = None,
    steps: Steps = None,
    seed: Seed = None,
    config: ConfigFile = None,
    as_json: AsJson = False,
) -> None:
    """Fit L3D to a toy and report MMCS of its subnetworks (initial and final) against the true mechanisms."""
    from anatomist.mechanisms.apd_l3d_toys import L3DExperiment, run_l3d_experiment

    exp = load_experiment(config, L3DExperiment, "l3d", toy, steps, seed)
    print_metrics(run_l3d_experiment(exp, out), as_json)
