"""The run contract: a config with a `kind` goes in, a folder comes out.

Every run folder holds `config.yaml` (the full resolved config, re-runnable as is), `metrics.json`
(one schema, `anatomist.core.metrics`), `provenance.json` (written here and nowhere else),
`checkpoints/` for kinds that train, and the kind's own plots and artefacts.

A kind is a config class (a `RunConfig` whose `kind` field is a one-value Literal) and a function
`execute(config, ctx) -> Outcome`, registered with `@register(ConfigClass)`. `run(config, out)` is the
one way to start any of them: the CLI, the demo and the experiments all go through it.

One rule for a folder that already holds a run (its config.yaml and a result or a checkpoint), for every
kind: `resume=True` continues it (training kinds; the config may differ only in the kind's
`resumable_changes`), and anything else is refused with a message saying how to resume or to choose
another folder, naming the keys that differ. A start that fails before its first checkpoint locks nothing:
its config.yaml is taken back. Kinds made of runs (the demo, sweeps) rerun into their folder, each part
continuing or rerunning on its own (`run_or_continue`).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar, Union

import yaml
from pydantic import Field, TypeAdapter

from anatomist.core import distributed
from anatomist.core.checkpoint import Checkpointer
from anatomist.core.config import Config, read_yaml_mapping
from anatomist.core.errors import AnatomistError, nearest
from anatomist.core.io import atomic_write_text, remove_temporaries
from anatomist.core.lock import folder_lock
from anatomist.core.metrics import METRICS, Metrics, write_metrics
from anatomist.core.progress import LOSS_LOG
from anatomist.core.provenance import PROVENANCE, collect_parts, write_provenance
from anatomist.core.threads import torch_threads

CONFIG = "config.yaml"


class RunConfig(Config):
    """Base of every run kind's config; subclasses set `kind: Literal["name"] = "name"`."""

    kind: str
    # keys a resumed run may change (e.g. how often it logs); every other difference is refused
    resumable_changes: ClassVar[frozenset[str]] = frozenset()
    # overrides (`--set` style) that shrink a run of this kind to seconds: the experiment smoke tests use them
    smoke: ClassVar[tuple[str, ...]] = ()


@dataclass
class Context:
    """Where a kind writes, and whether it continues from the checkpoints already there."""

    out: Path
    resume: bool = False

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"


@dataclass
class Outcome:
    """What a kind's `execute` returns: its numbers (nested dict), what it read, and a one-line summary."""

    metrics: Mapping[str, Any]
    summary: str = ""
    models: list[dict[str, Any]] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    access: Iterable[str] = ()
    value: Any = None  # the kind's main product for library callers (a dictionary, a decomposition, ...)


@dataclass
class RunResult:
    kind: str
    out: Path
    config: RunConfig
    metrics: Metrics
    summary: str
    seconds: float
    value: Any = None

    def to_json(self) -> dict[str, Any]:
        """{out, seconds} and the metrics.json content: format, kind, summary, numbers, tables."""
        return {"out": str(self.out), "seconds": round(self.seconds, 2),
                **self.metrics.to_json(self.kind, self.summary)}


C = TypeVar("C", bound=RunConfig)


@dataclass(frozen=True)
class Kind:
    name: str
    config: type[RunConfig]
    execute: Callable[[Any, Context], Outcome]
    trains: bool  # writes checkpoints and honours --resume
    composite: bool = False  # made of runs in sub-folders (demo, sweep): a rerun continues it, part by part
    data_parallel: bool = False  # launched by torchrun, its ranks split the batches (the others are refused there)

    @property
    def help(self) -> str:
        return (self.config.__doc__ or "").strip().splitlines()[0] if self.config.__doc__ else ""


KINDS: dict[str, Kind] = {}


def kind_name(config_cls: type[RunConfig]) -> str:
    default = config_cls.model_fields["kind"].default
    if not isinstance(default, str):
        raise TypeError(f"{config_cls.__name__}.kind needs a Literal default naming the kind")
    return default


def register(config_cls: type[C], *, trains: bool = False, composite: bool = False, data_parallel: bool = False,
             ) -> Callable[[Callable[[C, Context], Outcome]], Any]:
    """Decorator: `@register(SPDToyConfig, trains=True)` over `def execute(cfg, ctx) -> Outcome`."""

    def add(execute: Callable[[C, Context], Outcome]) -> Callable[[C, Context], Outcome]:
        name = kind_name(config_cls)
        if name in KINDS:
            raise TypeError(f"run kind '{name}' registered twice")
        KINDS[name] = Kind(name, config_cls, execute, trains, composite, data_parallel)
        return execute

    return add


def get_kind(name: str) -> Kind:
    if name not in KINDS:
        hint = nearest(name, KINDS, n=3)
        raise AnatomistError(f"unknown run kind '{name}'" + (f" (did you mean {hint}?)" if hint else "")
                             + f"; known: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def parse_run_config(data: Mapping[str, Any], source: str = "config") -> RunConfig:
    """The config of the kind named by data["kind"] (the discriminator), validated with errors naming keys."""
    if "kind" not in data:
        raise AnatomistError(f"{source}: key 'kind' missing; known kinds: {', '.join(sorted(KINDS))}")
    kind = get_kind(str(data["kind"]))
    return kind.config.parse(dict(data), source=source)


def run_config_union() -> TypeAdapter[Any]:
    """Every registered kind's config as one pydantic discriminated union on `kind` (e.g. for a JSON schema)."""
    configs = tuple(k.config for k in KINDS.values())
    return TypeAdapter(Annotated[Union[configs], Field(discriminator="kind")])  # type: ignore[arg-type]  # noqa: UP007


def apply_overrides(data: dict[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """`--set a.b=value` on a config mapping; values are read as YAML (numbers, lists, null, ...)."""
    data = copy.deepcopy(data)
    for item in assignments:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise AnatomistError(f"--set {item!r}: expected key.path=value")
        *parents, leaf = path.split(".")
        node = data
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise AnatomistError(f"--set {item!r}: '{p}' is a {type(child).__name__}, not a section")
            node = child
        node[leaf] = _parse_value(raw)
    return data


def _parse_value(raw: str) -> Any:
    """JSON first (so 1e-3 is a number, which YAML 1.1 would read as text), then YAML (lists, null, words)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return yaml.safe_load(raw) if raw else ""


def load_run_config(target: str, assignments: Iterable[str] = ()) -> RunConfig:
    """A config from a YAML path or a kind name (its defaults), with `--set` overrides laid over it."""
    if target in KINDS:
        data: dict[str, Any] = {"kind": target}
        source = f"kind {target}"
    else:
        if not Path(target).exists() and not target.endswith((".yaml", ".yml")):
            get_kind(target)  # a mistyped kind name: say so, with the nearest kinds
        data, source = read_yaml_mapping(target), target
    assignments = list(assignments)
    return parse_run_config(apply_overrides(with_default_sections(data, assignments), assignments), source=source)


def with_default_sections(data: dict[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """`data` with the kind's default for each section that a `--set section.key=value` changes but `data` leaves
    out, so the override changes that one key of the kind's recipe (spd-lm's SPD settings, say) instead of starting
    the section from empty, which would reset every other key to the section class's own defaults."""
    kind = KINDS.get(str(data.get("kind")))
    if kind is None:
        return data
    out = dict(data)
    for item in assignments:
        section, dot, _ = item.partition("=")[0].partition(".")
        field_info = kind.config.model_fields.get(section)
        if dot and section not in out and field_info is not None:
            default = field_info.get_default(call_default_factory=True)
            if isinstance(default, Config):
                out[section] = default.model_dump(mode="json")
    return out


def _config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def started(out: Path) -> bool:
    """Whether `out` holds a run that really started: its config.yaml and a result (metrics.json) or a checkpoint.

    A config.yaml alone is what a start killed before its first checkpoint left: it holds nothing to keep.
    """
    return (out / CONFIG).is_file() and ((out / METRICS).is_file() or bool(Checkpointer(out).steps()))


def _differing_keys(config: RunConfig, out: Path, allowed: Iterable[str] = ()) -> list[str]:
    before = read_yaml_mapping(out / CONFIG)
    allowed = set(allowed)
    return [k for k in _config_differences(before, config.model_dump(mode="json")) if k.split(".")[0] not in allowed]


def _check_resume(config: RunConfig, out: Path) -> None:
    path = out / CONFIG
    if not path.is_file():
        raise AnatomistError(f"{out}: nothing to resume (no {CONFIG}); run without --resume to start it")
    differ = _differing_keys(config, out, config.resumable_changes)
    if differ and not started(out):
        raise AnatomistError(f"{path}: --resume with a config that differs in {', '.join(differ)}; that run never "
                             "reached a checkpoint, so start it afresh without --resume")
    if differ:
        raise AnatomistError(f"{path}: --resume with a config that differs in {', '.join(differ)}; "
                             "resume with the run's own config or start a new run in another folder")


def _refuse_rerun(kind: Kind, config: RunConfig, out: Path) -> None:
    """The message for a start into a folder that holds a run: how to continue it, or where to start afresh."""
    differ = _differing_keys(config, out)
    why = f" (your config differs in {', '.join(differ)})" if differ else ""
    if kind.trains:
        latest = Checkpointer(out).latest()
        state = f"newest checkpoint: step {latest}" if latest is not None else "finished"
        raise AnatomistError(f"{out}: holds a '{kind.name}' run already ({state}){why}; continue it with --resume "
                             "(same config), or choose another --out to start a new run")
    raise AnatomistError(f"{out}: holds a finished '{kind.name}' run already{why}; choose another --out "
                         "(or delete the folder to redo it)")


def _clear_run(out: Path) -> None:
    """What a run of the folder's earlier config left that a new run would mix with (replace=True only)."""
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    for name in (LOSS_LOG, METRICS, PROVENANCE):
        (out / name).unlink(missing_ok=True)


def run_or_continue(config: RunConfig, out: Path, threads: int = 0) -> RunResult:
    """A run in folder `out`; a training run whose folder already holds this exact config continues it.

    For runs made of runs (the demo, sweeps), which own their parts' folders: stopping and starting the whole
    again redoes nothing finished in training parts, reruns the other parts, and replaces a part whose config
    changed (`replace=True`).
    """
    same = distributed.main_decides(  # rank 0's reading: it may be rewriting config.yaml as the others read it
        lambda: (out / CONFIG).is_file() and read_yaml_mapping(out / CONFIG) == config.model_dump(mode="json"))
    return run(config, out, resume=same and get_kind(config.kind).trains, threads=threads, replace=True)


def run(config: RunConfig, out: str | Path, *, resume: bool = False, threads: int = 0,
        replace: bool = False) -> RunResult:
    """Run any kind into folder `out` and write its config.yaml, metrics.json and provenance.json.

    A folder that holds a run is continued with `resume=True` (training kinds), replaced with `replace=True`
    (its checkpoints, loss log and results go first), and otherwise refused. Launched by torchrun, every rank
    runs the kind (data-parallel kinds split their batches) and rank 0 alone writes the folder (`_run_folder`).
    """
    kind = get_kind(config.kind)
    out = Path(out)
    if resume and kind.composite:
        raise AnatomistError(f"run kind '{kind.name}' continues without --resume: run it again into {out} "
                             "(its training runs continue from their checkpoints, the other parts run again)")
    if resume and not kind.trains:
        raise AnatomistError(f"run kind '{kind.name}' does not train, so it has nothing to resume")
    if distributed.init_from_env() and distributed.world_size() > 1 and not kind.data_parallel:
        # N ranks would each run the whole kind and write its own files over the others'
        able = ", ".join(sorted(k.name for k in KINDS.values() if k.data_parallel))
        raise AnatomistError(f"run kind '{kind.name}' does not run data-parallel: start it without torchrun "
                             f"(kinds that do: {able})")
    with _run_folder(kind, config, out, resume, replace) as result:
        start = time.perf_counter()
        with torch_threads(threads):
            outcome = kind.execute(config, Context(out, resume))
        result.seconds = time.perf_counter() - start
        result.outcome, result.metrics = outcome, Metrics.from_nested(outcome.metrics)
    return RunResult(kind.name, out, config, result.metrics, outcome.summary, result.seconds, outcome.value)


@dataclass
class _Finished:
    """What the body of `_run_folder` hands back for the folder's result files."""

    outcome: Outcome = field(default_factory=lambda: Outcome({}))
    metrics: Metrics = field(default_factory=Metrics)
    seconds: float = 0.0


@contextmanager
def _run_folder(kind: Kind, config: RunConfig, out: Path, resume: bool, replace: bool) -> Iterator[_Finished]:
    """The one place a run writes its folder's contract files, around the body that executes the kind.

    Rank 0 (every plain process) locks the folder, checks it (resume, refusal, replacement), writes config.yaml,
    and after the body metrics.json and provenance.json. Under torch.distributed the other ranks write nothing:
    they get rank 0's verdict on the folder (its refusal, or a lock held elsewhere, raised on every rank), run the
    body in step with it, and leave once the folder is complete.
    """
    result = _Finished()
    if not distributed.is_main():
        distributed.main_decides(lambda: None)
        yield result
        distributed.barrier()
        return
    with ExitStack() as held:
        distributed.main_decides(lambda: _start_folder(held, kind, config, out, resume, replace))
        with _taken_back_on_failure(out):
            atomic_write_text(out / CONFIG, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
            yield result
        outcome = result.outcome
        write_metrics(out, kind.name, result.metrics, outcome.summary)
        write_provenance(out, models=outcome.models, data=outcome.data, config=config,
                         seed=getattr(config, "seed", None), access=outcome.access, parts=collect_parts(out))
    distributed.barrier()


def _start_folder(held: ExitStack, kind: Kind, config: RunConfig, out: Path, resume: bool, replace: bool) -> None:
    """Lock the folder for the run (held until `held` closes), check it, and clear what an earlier run left."""
    held.enter_context(folder_lock(out, "running"))  # two runs into one folder would interleave checkpoints, logs
    if resume:
        _check_resume(config, out)
    elif started(out) and not kind.composite:
        if not replace:
            _refuse_rerun(kind, config, out)
        _clear_run(out)
    remove_temporaries(out)  # what a killed write left (config, metrics, a dictionary folder being swapped in)


@contextmanager
def _taken_back_on_failure(out: Path) -> Iterator[None]:
    """A start that fails before it checkpointed anything (a site typo, a resume refused by the checkpoint) leaves
    the folder's config.yaml as it found it, so it locks nothing and relabels nothing."""
    path = out / CONFIG
    before = path.read_text() if path.is_file() else None
    newest = Checkpointer(out).latest()
    try:
        yield
    except BaseException:
        if Checkpointer(out).latest() == newest:
            if before is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write_text(path, before)
        raise
