"""Sites: named places in any PyTorch model where activations are read or replaced.

A `Site` is a module path plus whether we mean the module's input or its output, the way
forward hooks (and nnsight) address modules: `Site("model.layers.6", "output")`. For modules
that return tuples or `ModelOutput`s (Hugging Face decoder layers), the site is the first
element, the hidden state. Reading (`capture`) and replacing (`splice`) use the same hooks.

`capture` stops the forward pass as soon as every requested site has been seen, so reading
layer 6 of a 30-layer model costs 6 layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import torch
from torch import nn

from anatomist.core.errors import AnatomistError, nearest

Where = Literal["input", "output"]


@dataclass(frozen=True, order=True)
class Site:
    """A module's input or output, named by its path in `model.named_modules()`."""

    module: str
    where: Where = "output"

    def __post_init__(self) -> None:
        if self.where not in get_args(Where):
            raise AnatomistError(f"site '{self.module}': where must be 'input' or 'output', got '{self.where}'")

    @classmethod
    def parse(cls, site: Site | str) -> Site:
        """'model.layers.6' (output) or 'model.layers.6:input'."""
        if isinstance(site, Site):
            return site
        module, _, where = site.partition(":")
        return cls(module, cast(Where, where or "output"))

    def __str__(self) -> str:
        return f"{self.module}:{self.where}"


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at `path` ('' is the model itself); a wrong path lists the nearest valid ones."""
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    close = nearest(path, [n for n in modules if n])
    hint = f"; nearest valid names: {', '.join(close)}" if close else ""
    raise AnatomistError(f"no module '{path}' in {type(model).__name__}{hint}")


# --- getting at the tensor inside whatever a module takes or returns -------------------------


def primary(value: Any) -> torch.Tensor:
    """The hidden state inside a module's output: the tensor itself, or the first element."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list) and value:
        return primary(value[0])
    if isinstance(value, Mapping) and value:
        return primary(next(iter(value.values())))
    raise AnatomistError(f"expected a tensor (or a tuple/ModelOutput holding one), got {type(value).__name__}")


def _with_primary(value: Any, new: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return new
    if isinstance(value, tuple):
        return (_with_primary(value[0], new), *value[1:])
    if isinstance(value, list):
        return [_with_primary(value[0], new), *value[1:]]
    if isinstance(value, dict):  # ModelOutput is an ordered dict
        key = next(iter(value))
        value[key] = _with_primary(value[key], new)
        return value
    raise AnatomistError(f"cannot replace a value of type {type(value).__name__}")


def _input_primary(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if args:
        return primary(args[0])
    for key in ("hidden_states", "input", "x", "inputs_embeds", "input_ids"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    for v in kwargs.values():
        if isinstance(v, torch.Tensor):
            return v
    raise AnatomistError("module was called with no tensor argument")


def _input_with_primary(
    args: tuple[Any, ...], kwargs: dict[str, Any], new: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (_with_primary(args[0], new), *args[1:]), kwargs
    for key in ("hidden_states", "input", "x", "inputs_embeds", "input_ids"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return args, {**kwargs, key: new}
    key = next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    return args, {**kwargs, key: new}


# --- hooks -------------------------------------------------------------------------------------
# Every intervention in anatomist goes through this module: reading sites (`capture`, `record`,
# `run_and_capture`), changing their values (`splice`), and swapping a module's computation for the
# duration of a block (`replace_forward`). Lenses do not register hooks or patch `forward` themselves.


SiteFn = Callable[[torch.Tensor], torch.Tensor]


def _register(module: nn.Module, site: Site, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Any:
    """Hook `fn` on a site; if `fn` returns a tensor it replaces the site's value."""
    if site.where == "output":

        def out_hook(_m: nn.Module, _args: Any, output: Any) -> Any:
            new = fn(primary(output))
            return None if new is None else _with_primary(output, new)

        return module.register_forward_hook(out_hook)

    def in_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        new = fn(_input_primary(args, kwargs))
        return None if new is None else _input_with_primary(args, kwargs, new)

    return module.register_forward_pre_hook(in_hook, with_kwargs=True)


@contextlib.contextmanager
def _hooks(model: nn.Module, fns: Mapping[Site, Callable[[torch.Tensor], torch.Tensor | None]]) -> Iterator[None]:
    handles = [_register(get_module(model, s.module), s, fn) for s, fn in fns.items()]
    try:
        yield
    finally:  # hooks never outlive the call, also when the forward raises
        for h in handles:
            h.remove()


def run_model(model: nn.Module, inputs: Any) -> Any:
    """Call a model the way its inputs ask: a mapping as keywords, a tuple as positionals."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def describe_inputs(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return f"shape {list(inputs.shape)} ({inputs.dtype})"
    if isinstance(inputs, Mapping):
        return "{" + ", ".join(f"{k}: {describe_inputs(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, tuple | list):
        return "(" + ", ".join(describe_inputs(v) for v in inputs) + ")"
    return type(inputs).__name__


class _Stop(Exception):
    """Raised inside a hook once every requested site is captured, to skip the rest of the model."""


def capture(
    model: nn.Module,
    inputs: Any,
    sites: Sequence[Site | str] | Site | str,
    *,
    stop_early: bool = True,
    grad: bool = False,
) -> dict[Site, torch.Tensor]:
    """Run `model` on `inputs` and return the value at each site.

    The forward pass stops once every site is seen (`stop_early`); with `grad=False` it runs
    under `torch.no_grad()` and the returned tensors are detached.
    """
    wanted = [Site.parse(s) for s in ([sites] if isinstance(sites, Site | str) else sites)]
    if not wanted:
        raise AnatomistError("capture needs at least one site")
    for s in wanted:
        get_module(model, s.module)  # fail on a bad name before running anything
    seen: dict[Site, torch.Tensor] = {}

    def reader(site: Site) -> Callable[[torch.Tensor], None]:
        def read(value: torch.Tensor) -> None:
            if site in seen:
                raise AnatomistError(
                    f"site '{site}' is reached more than once per forward (a module reused in the model); "
                    "name a module that runs once"
                )
            seen[site] = value if grad else value.detach()
            if stop_early and len(seen) == len(wanted):
                raise _Stop

        return read

    with _hooks(model, {s: reader(s) for s in wanted}), torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        try:
            run_model(model, inputs)
        except _Stop:
            pass
        except AnatomistError:
            raise
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AnatomistError(
                f"{type(model).__name__} failed on input {describe_inputs(inputs)}: {first}"
            ) from e
    missing = [str(s) for s in wanted if s not in seen]
    if missing:
        raise AnatomistError(f"site(s) {missing} never ran in the forward pass of {type(model).__name__}")
    return {s: seen[s] for s in wanted}


@contextlib.contextmanager
def splice(model: nn.Module, fns: Mapping[Site | str, SiteFn]) -> Iterator[nn.Module]:
    """Within the block, every forward replaces each site's value `v` by `fn(v)`.

    `fn` must return a tensor of the same shape (e.g. an SAE reconstruction). Hooks are removed
    on exit, also when the forward raises.
    """

    def replacer(site: Site, fn: SiteFn) -> Callable[[torch.Tensor], torch.Tensor]:
        def replace(value: torch.Tensor) -> torch.Tensor:
            new = fn(value)
            if not isinstance(new, torch.Tensor) or new.shape != value.shape:
                got = list(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise AnatomistError(f"splice at '{site}': expected shape {list(value.shape)}, function returned {got}")
            return new

        return replace

    parsed = {Site.parse(s): fn for s, fn in fns.items()}
    with _hooks(model, {s: replacer(s, fn) for s, fn in parsed.items()}):
        yield model


@dataclass(frozen=True)
class SiteInfo:
    """One module of a model, with the shapes it took and gave on a sample input (if one was run)."""

    module: str
    type: str
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None


def list_sites(model: nn.Module, sample_input: Any = None) -> list[SiteInfo]:
    """Every named module, in the order it runs on `sample_input` (or definition order without one)."""
    named = [(n, m) for n, m in model.named_modules() if n]
    if sample_input is None:
        return [SiteInfo(n, type(m).__name__) for n, m in named]
    shapes: dict[str, tuple[tuple[int, ...] | None, tuple[int, ...] | None]] = {}
    order: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if name in shapes:
                return
            try:
                inp: tuple[int, ...] | None = tuple(_input_primary(args, kwargs).shape)
            except AnatomistError:
                inp = None
            try:
                out: tuple[int, ...] | None = tuple(primary(output).shape)
            except AnatomistError:
                out = None
            shapes[name] = (inp, out)
            order.append(name)

        return record

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in named]
    try:
        with torch.no_grad():
            try:
                run_model(model, sample_input)
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise AnatomistError(
                    f"{type(model).__name__} failed on input {describe_inputs(sample_input)}: {first}"
                ) from e
    finally:
        for h in handles:
            h.remove()
    types = dict(named)
    # hooks fire when a module finishes; sort by first *start* is not observable, so keep finish order
    ran = [SiteInfo(n, type(types[n]).__name__, *shapes[n]) for n in order]
    unran = [SiteInfo(n, type(m).__name__) for n, m in named if n not in shapes]
    return ran + unran


@contextlib.contextmanager
def record(model: nn.Module, sites: Sequence[Site | str], *, grad: bool = True) -> Iterator[dict[Site, torch.Tensor]]:
    """Within the block, every forward stores each site's value (the last call's) in the yielded dict.

    The values pass through unchanged; with `grad=True` they stay in the autograd graph (for losses on
    intermediate activations). Unlike `capture`, the forward is not stopped and the caller runs it.
    """
    parsed = [Site.parse(s) for s in sites]
    seen: dict[Site, torch.Tensor] = {}

    def keeper(site: Site) -> Callable[[torch.Tensor], None]:
        def keep(value: torch.Tensor) -> None:
            seen[site] = value if grad else value.detach()

        return keep

    with _hooks(model, {s: keeper(s) for s in parsed}):
        yield seen


def run_and_capture(model: nn.Module, inputs: Any, sites: Sequence[Site | str], *,
                    grad: bool = True) -> tuple[Any, dict[Site, torch.Tensor]]:
    """The model's whole output on `inputs` and the value at each site, in one forward (no early stop)."""
    parsed = [Site.parse(s) for s in sites]
    with record(model, parsed, grad=grad) as seen:
        out = run_model(model, inputs)
    missing = [str(s) for s in parsed if s not in seen]
    if missing:
        raise AnatomistError(f"site(s) {missing} never ran in the forward pass of {type(model).__name__}")
    return out, dict(seen)


@contextlib.contextmanager
def replace_forward(model: nn.Module, forwards: Mapping[str, Callable[..., Any]]) -> Iterator[nn.Module]:
    """Within the block, module `path` runs `forwards[path](*args, **kwargs)` instead of its own forward.

    Hooks registered on the module still run around the new forward. Every module gets its own
    forward back on exit, also when the block raises.
    """
    patched: list[tuple[nn.Module, Any]] = []
    try:
        for path, fn in forwards.items():
            module = get_module(model, path)
            patched.append((module, module.__dict__.get("forward")))
            module.forward = fn  # type: ignore[method-assign]
        yield model
    finally:
        for module, previous in reversed(patched):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous  # type: ignore[method-assign]
