"""`anatomist run CONFIG.yaml|KIND [--set key.path=value ...] --out DIR [--resume] [--json]`: any kind.

The options of each kind are its config's fields, so this one command is generated from the config
classes: `anatomist run --list` lists the kinds, `anatomist run KIND --help` their fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import click
import typer
from rich.table import Table

from anatomist.cli.output import console, print_result
from anatomist.core.config import Config
from anatomist.core.distributed import is_main
from anatomist.runs import KINDS, get_kind, load_run_config, run
from anatomist.runs.base import RunConfig


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _sections(annotation: Any) -> list[type[Config]]:
    """The config classes a field holds: one for a nested section, several for a union (e.g. SAE architectures)."""
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return [m for m in members if isinstance(m, type) and issubclass(m, Config)]


def field_rows(cls: type[Config], prefix: str = "") -> Iterable[tuple[str, str, str, str]]:
    """(key path, type, default, description) of a config's fields, nested sections flattened.

    A field that is one of several sections (a discriminated union) lists each variant's fields once, with the
    variants that have it named after the description.
    """
    for name, field in cls.model_fields.items():
        if name == "kind" and issubclass(cls, RunConfig):
            continue
        sections = _sections(field.annotation)
        if len(sections) == 1:
            yield from field_rows(sections[0], f"{prefix}{name}.")
        elif sections:
            yield from _union_rows(sections, f"{prefix}{name}.")
        else:
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            yield f"{prefix}{name}", _type_name(field.annotation), default, field.description or ""


def _union_rows(variants: list[type[Config]], prefix: str) -> Iterable[tuple[str, str, str, str]]:
    rows: dict[str, tuple[str, str, str, str]] = {}
    tags = [_tag(v) for v in variants]
    owners: dict[str, list[str]] = {}
    for variant, tag in zip(variants, tags, strict=True):
        for row in field_rows(variant, prefix):
            rows.setdefault(row[0], row)
            owners.setdefault(row[0], []).append(tag)
    for key, (_, type_name, default, description) in rows.items():
        if key == f"{prefix}{_discriminator(variants[0])}":
            type_name, default = "one of " + ", ".join(repr(t) for t in tags), "required"
        only = owners[key] if len(owners[key]) < len(variants) else []
        yield key, type_name, default, description + (f" [{', '.join(only)} only]" if only else "")


def _discriminator(variant: type[Config]) -> str:
    """The field that names the variant: its one-value Literal (`arch: Literal["topk"]`)."""
    return next(n for n, f in variant.model_fields.items()
                if get_origin(f.annotation) is Literal and len(get_args(f.annotation)) == 1)


def _tag(variant: type[Config]) -> str:
    return str(variant.model_fields[_discriminator(variant)].default)


def print_kinds(as_json: bool) -> None:
    if as_json:
        print(json.dumps({n: {"help": k.help, "trains": k.trains} for n, k in sorted(KINDS.items())}))
        return
    table = Table("kind", "trains", "what it does", box=None)
    for name, kind in sorted(KINDS.items()):
        table.add_row(name, "yes" if kind.trains else "", kind.help)
    console.print(table)


def print_kind_help(name: str, as_json: bool) -> None:
    kind = get_kind(name)
    rows = list(field_rows(kind.config))
    if as_json:
        print(json.dumps({"kind": name, "help": kind.help, "fields": [dict(zip(("key", "type", "default",
                          "description"), r, strict=True)) for r in rows]}))
        return
    console.print(f"[bold]{name}[/bold]: {kind.help}" + (" (trains: --resume continues it)" if kind.trains else ""))
    table = Table("key", "type", "default", "description", box=None)
    for r in rows:
        table.add_row(*r)
    console.print(table)
    console.print(f"example: anatomist run {name} --set {rows[0][0] if rows else 'key'}=VALUE --out runs/{name}")


def run_command(
    target: Annotated[str | None, typer.Argument(help="a run config YAML (with a `kind:` key) or a kind name")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config key: key.path=value (YAML value)")]
    = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/KIND)")] = None,
    resume: Annotated[bool, typer.Option(help="continue a training run from its newest checkpoint")] = False,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0: torch's default)")] = 0,
    list_: Annotated[bool, typer.Option("--list", help="list the run kinds")] = False,
    help_: Annotated[bool, typer.Option("--help", "-h", help="this help, or with a kind, its config fields")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Run any kind: a config goes in, a folder with config.yaml, metrics.json, provenance.json comes out."""
    if list_:
        print_kinds(as_json)
        return
    if help_ or target is None:
        if target is not None and target in KINDS:
            print_kind_help(target, as_json)
            return
        ctx = click.get_current_context()
        console.print(ctx.get_help(), highlight=False)
        return
    invoke(target, set_ or [], out, resume=resume, threads=threads, as_json=as_json)


def invoke(target: str, sets: list[str], out: Path | str | None, *, resume: bool = False, threads: int = 0,
           as_json: bool = False, extra: dict[str, Any] | None = None) -> None:
    """The path every command takes: load the config, lay overrides over it, run, print."""
    assignments = list(sets) + [f"{k}={json.dumps(v)}" for k, v in (extra or {}).items() if v is not None]
    config = load_run_config(target, assignments)
    result = run(config, out if out is not None else Path("runs") / config.kind, resume=resume, threads=threads)
    if is_main():  # launched by torchrun, every rank holds the result: one prints it
        print_result(result, as_json)
