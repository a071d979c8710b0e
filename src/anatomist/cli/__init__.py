"""The `anatomist` command: `anatomist run` for every kind, plus short aliases that take the same path."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from anatomist.cli import dictionaries
from anatomist.cli.mechanisms import apd_app, bilinear_app, l3d_app, spd_app
from anatomist.cli.output import console, emit, print_result
from anatomist.cli.regions import regions_app
from anatomist.cli.report import dashboard, report, serve
from anatomist.cli.routes import routes_app
from anatomist.cli.run import run_command
from anatomist.cli.sae import sae_app
from anatomist.cli.steer import steer
from anatomist.cli.toy import toy_app
from anatomist.core.errors import AnatomistError
from anatomist.core.io import dumps
from anatomist.nets.assets import load_model
from anatomist.nets.sites import list_sites
from anatomist.report.site import build_report
from anatomist.runs import parse_run_config, run

app = typer.Typer(help="Take trained neural networks apart into units a person can study.", no_args_is_help=True)
app.command("run", add_help_option=False, context_settings={"allow_interspersed_args": True})(run_command)

# the short commands: each an alias of `anatomist run KIND` (or a reader of run folders), beside its kind
for sub, name in [(toy_app, "toy"), (sae_app, "sae"), (spd_app, "spd"), (apd_app, "apd"), (l3d_app, "l3d"),
                  (bilinear_app, "bilinear"), (regions_app, "regions"), (routes_app, "routes")]:
    app.add_typer(sub, name=name)
for command in (report, serve, dashboard, steer):
    app.command()(command)
for name in dictionaries.DICTIONARY_COMMANDS:  # one command each: `anatomist mdl PATH...`
    app.command(name)(getattr(dictionaries, name))

__all__ = ["app", "emit", "main"]


@app.command()
def sites(
    model: Annotated[str, typer.Argument(help="packaged name (smollm2, mnist-cnn, minilm) or a local HF folder")],
    filter: Annotated[str, typer.Option(help="only modules whose path contains this text")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List a model's sites with the shapes they take on a sample input."""
    loaded = load_model(model)
    infos = [s for s in list_sites(loaded.model, loaded.sample_input()) if filter in s.module]
    if as_json:
        print(dumps([s.__dict__ for s in infos]))
        return
    rows = [(s.module, s.type, str(list(s.input_shape or [])), str(list(s.output_shape or []))) for s in infos]
    if not sys.stdout.isatty():  # a pipe or a log: whole names, one tab-separated line each (a table would cut them)
        print("\n".join("\t".join(r) for r in [("module", "type", "input", "output"), *rows]))
        return
    table = Table("module", "type", "input", "output")
    for r in rows:
        table.add_row(*r)
    console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="run folder to write")] = Path("runs/demo"),
    parts: Annotated[list[str] | None, typer.Option("--part", help="run only these parts (repeatable)")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0: torch's default)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """The main job on embedded defaults: a tour of every lens (`anatomist run demo`), then its report."""
    result = run(parse_run_config({"kind": "demo", **({"parts": parts} if parts else {})}), out, threads=threads)
    index = build_report(out)
    if as_json:
        print(dumps({**result.to_json(), "report": str(index.resolve())}, default=str))
        return
    print_result(result, as_json=False)
    console.print(f"report: {index.resolve()}", highlight=False, soft_wrap=True)


def main() -> None:
    try:
        app()
    except AnatomistError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
