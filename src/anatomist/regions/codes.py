"""Spline codes: which side of each neuron's boundary an input lies on, packed so millions fit in memory.

A site given to the polytope lens names an activation module (an `nn.ReLU`, an MLP's `act_fn`);
its code is read from that module's INPUT z (the pre-activation). Every activation we know is
self-gated, f(z) = z * g(z), and the code of a unit is its gate:

- binary, for ReLU-family activations (ReLU, LeakyReLU, PReLU, RReLU, ReLU^2): the step 1[z > 0];
- soft, for smooth ones, g(z) = f(z)/z in (0, 1): SiLU -> sigmoid(z); GELU -> Phi(z) (the tanh
  approximation where the module uses it); QuickGELU -> sigmoid(1.702 z); Mish -> tanh(softplus(z));
  Hardswish -> clamp((z + 3) / 6, 0, 1). For a SwiGLU MLP (Llama's `mlp.act_fn`, applied to
  `gate_proj(x)`) the soft code is sigmoid(gate_proj(x)), the gate's opening per hidden unit.

Every code also has a hard version, 1[z > 0] (for soft codes: g(z) > 1/2, as g(0) = 1/2 for all the
smooth gates but Mish). Hard codes are stored bit-packed (`np.packbits`, 8 units per byte); soft
codes, when asked for, are stored quantised to one byte per unit (round(255 g), error <= 1/510).
`stream_codes` runs a model over batches and keeps only these packed codes, never the activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_tensors, save_tensors
from anatomist.nets.sites import Site, capture, get_module

Gate = Callable[[torch.Tensor], torch.Tensor]
Kind = Literal["binary", "soft"]


def _step(z: torch.Tensor) -> torch.Tensor:
    return (z > 0).to(z.dtype)


def _gelu_tanh(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))


def _gelu_erf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


# activation class name -> its gate g(z), with f(z) = z * g(z); names cover torch.nn and transformers.activations
BINARY_ACTIVATIONS = ("ReLU", "LeakyReLU", "PReLU", "RReLU", "ReLUSquaredActivation")
SOFT_GATES: dict[str, Gate] = {
    "SiLU": torch.sigmoid,
    "SiLUActivation": torch.sigmoid,
    "GELUActivation": _gelu_erf,
    "GELUTanh": _gelu_tanh,
    "PytorchGELUTanh": _gelu_tanh,
    "NewGELUActivation": _gelu_tanh,
    "FastGELUActivation": _gelu_tanh,
    "AccurateGELUActivation": _gelu_tanh,
    "QuickGELUActivation": lambda z: torch.sigmoid(1.702 * z),
    "Mish": lambda z: torch.tanh(F.softplus(z)),
    "MishActivation": lambda z: torch.tanh(F.softplus(z)),
    "Hardswish": lambda z: ((z + 3.0) / 6.0).clamp(0.0, 1.0),
}


@dataclass(frozen=True)
class CodeSite:
    """An activation module the polytope lens reads: its path, whether its code is binary or soft, its gate."""

    module: str
    kind: Kind
    gate: Gate

    @property
    def site(self) -> Site:
        return Site(self.module, "input")


def _gate_of(module: nn.Module) -> tuple[Kind, Gate] | None:
    name = type(module).__name__
    if name in BINARY_ACTIVATIONS:
        return "binary", _step
    if name == "GELU":  # torch's nn.GELU says which formula it uses
        return "soft", _gelu_tanh if getattr(module, "approximate", "none") == "tanh" else _gelu_erf
    if name in SOFT_GATES:
        return "soft", SOFT_GATES[name]
    return None


def code_sites(model: nn.Module, sites: Sequence[str | Site]) -> list[CodeSite]:
    """Check that each site names an activation module we know; only the module path of a `Site` is used."""
    if not sites:
        raise AnatomistError("the polytope lens needs at least one site (an activation module, e.g. 'features.relu1')")
    out = []
    for s in sites:
        path = Site.parse(s).module
        module = get_module(model, path)
        found = _gate_of(module)
        if found is None:
            near = nearby_activations(model, path)
            hint = f"; activation modules nearby: {', '.join(near)}" if near else "; the model has no activation module"
            raise AnatomistError(
                f"site '{path}' is a {type(module).__name__}, not an activation the polytope lens knows "
                f"({', '.join(BINARY_ACTIVATIONS[:2])}, SiLU, GELU, ...); name the nonlinearity itself{hint}"
            )
        out.append(CodeSite(path, *found))
    if len({c.module for c in out}) != len(out):
        raise AnatomistError(f"the polytope lens got a site twice: {[c.module for c in out]}")
    return out


def nearby_activations(model: nn.Module, path: str, n: int = 5) -> list[str]:
    """The `n` activation modules closest to `path` in the model's module order."""
    names = [name for name, _ in model.named_modules()]
    where = names.index(path) if path in names else 0
    acts = [(abs(i - where), name) for i, (name, m) in enumerate(model.named_modules()) if _gate_of(m) is not None]
    return [name for _, name in sorted(acts)[:n]]


# --- reading pre-activations ---------------------------------------------------------------------


def is_token_input(inputs: Any) -> bool:
    """Token ids (an integer [batch, seq] tensor, or a mapping with input_ids/inputs_embeds): one code per token."""
    if isinstance(inputs, Mapping):
        return "input_ids" in inputs or "inputs_embeds" in inputs
    return isinstance(inputs, torch.Tensor) and inputs.ndim == 2 and not inputs.is_floating_point()


def rows(value: torch.Tensor, per_token: bool, where: str) -> torch.Tensor:
    """A site's value as one row per example: [batch, units], or [batch * seq, units] per token."""
    if not per_token:
        return value.reshape(value.shape[0], -1)
    if value.ndim != 3:
        raise AnatomistError(
            f"site '{where}': per-token codes need a [batch, seq, units] value, got {list(value.shape)}"
        )
    return value.reshape(-1, value.shape[-1])


def preactivations(
    model: nn.Module, inputs: Any, sites: Sequence[CodeSite], per_token: bool | None = None
) -> list[torch.Tensor]:
    """The input z of each activation module, one row per example (or per token), in site order."""
    tokens = is_token_input(inputs) if per_token is None else per_token
    got = capture(model, inputs, [c.site for c in sites])
    out = [rows(got[c.site], tokens, c.module) for c in sites]
    mask = inputs.get("attention_mask") if tokens and isinstance(inputs, Mapping) else None
    if isinstance(mask, torch.Tensor):  # padding tokens get no code
        keep = mask.reshape(-1).bool().to(out[0].device)
        out = [z[keep] for z in out]
    return out


# --- the codes -------------------------------------------------------------------------------------


@dataclass
class SplineCodes:
    """Codes of n examples over the units of some sites, concatenated in site order.

    `bits` is the hard code 1[z > 0], packed 8 units to a byte (np.packbits order); `soft` the soft
    code quantised to a byte per unit, or None when soft codes were not asked for.
    """

    bits: np.ndarray  # uint8 [n, ceil(n_units / 8)]
    soft: np.ndarray | None  # uint8 [n, n_units], round(255 * gate)
    sites: tuple[str, ...]
    widths: tuple[int, ...]  # units per site

    @property
    def n_units(self) -> int:
        return sum(self.widths)

    def __len__(self) -> int:
        return self.bits.shape[0]

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes + (self.soft.nbytes if self.soft is not None else 0)

    def hard(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """bool [n, n_units]: the unpacked hard codes (of `rows` only, if given)."""
        bits = self.bits if rows is None else self.bits[rows]
        return np.unpackbits(bits, axis=1, count=self.n_units).astype(bool)

    def values(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """float32 [n, n_units]: soft codes in [0, 1] where stored, else the hard codes as 0/1."""
        if self.soft is not None:
            return (self.soft if rows is None else self.soft[rows]).astype(np.float32) / 255.0
        return self.hard(rows).astype(np.float32)

    def site_units(self, site: str) -> slice:
        """The columns of one site in `hard()` / `values()`."""
        if site not in self.sites:
            raise AnatomistError(f"no site '{site}' in these codes; they hold {list(self.sites)}")
        i = self.sites.index(site)
        start = sum(self.widths[:i])
        return slice(start, start + self.widths[i])

    def save(self, path: str | Path) -> None:
        tensors = {"bits": torch.from_numpy(self.bits)}
        if self.soft is not None:
            tensors["soft"] = torch.from_numpy(self.soft)
        meta = {"sites": ",".join(self.sites), "widths": ",".join(map(str, self.widths))}
        save_tensors(path, tensors, metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> SplineCodes:
        tensors = load_tensors(path, required=["bits"])
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "sites" not in meta or "widths" not in meta:
            raise AnatomistError(f"{path}: not a spline-codes file (no sites/widths metadata)")
        soft = tensors["soft"].numpy() if "soft" in tensors else None
        widths = tuple(int(w) for w in meta["widths"].split(","))
        return cls(tensors["bits"].numpy(), soft, tuple(meta["sites"].split(",")), widths)

    @classmethod
    def concat(cls, parts: Sequence[SplineCodes]) -> SplineCodes:
        if not parts:
            raise AnatomistError("no codes to concatenate")
        first = parts[0]
        soft = None if first.soft is None else np.concatenate([p.soft for p in parts if p.soft is not None])
        return cls(np.concatenate([p.bits for p in parts]), soft, first.sites, first.widths)


def encode(preacts: Sequence[torch.Tensor], sites: Sequence[CodeSite], soft: bool) -> SplineCodes:
    """Pack pre-activations ([n, units] per site) into codes."""
    z = torch.cat([p.float() for p in preacts], dim=1)  # [n, n_units]
    bits = np.packbits((z > 0).cpu().numpy(), axis=1)
    soft_q = None
    if soft:
        gates = torch.cat([c.gate(p.float()) for c, p in zip(sites, preacts, strict=True)], dim=1)
        soft_q = (gates.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return SplineCodes(bits, soft_q, tuple(c.module for c in sites), tuple(p.shape[1] for p in preacts))


def spline_codes(
    model: nn.Module,
    inputs: Any,
    sites: Sequence[str | Site],
    *,
    soft: bool = False,
    per_token: bool | None = None,
) -> SplineCodes:
    """The spline codes of a batch of inputs at `sites` (activation modules), one row per example.

    For token inputs (ids, or a mapping with input_ids) there is one code per token; `per_token`
    overrides that guess. `soft=True` also keeps the soft codes (see the module docstring).
    """
    resolved = code_sites(model, sites)
    return encode(preactivations(model, inputs, resolved, per_token), resolved, soft)


def stream_codes(
    model: nn.Module,
    batches: Iterable[Any],
    sites: Sequence[str | Site],
    *,
    soft: bool = False,
    per_token: bool | None = None,
) -> SplineCodes:
    """Codes for every batch of an iterable (e.g. a generator over a long corpus).

    Only the packed codes of each batch are kept, so memory grows by n_units / 8 bytes per example
    (plus n_units bytes with `soft`), whatever the model's activation sizes are.
    """
    resolved = code_sites(model, sites)
    parts = [encode(preactivations(model, batch, resolved, per_token), resolved, soft) for batch in batches]
    if not parts:
        raise AnatomistError("stream_codes got no batches")
    return SplineCodes.concat(parts)
