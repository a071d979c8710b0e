"""Rank-one subcomponents of a model's weights, shared by every parameter decomposition (SPD, APD, L3D).

A *target* is a weight-carrying layer of any PyTorch model, picked by module-name patterns:
`nn.Linear`, `nn.Embedding`, Hugging Face `Conv1D` (GPT-2 style, weight stored `[d_in, d_out]`),
or a linear-like module that exposes `weight`, `in_features` and `out_features` (e.g. a layer
whose weight is the transpose of another's). Each target's weight, read as the map y = W x
(`nn.Linear` layout, `[d_out, d_in]`), is written as a sum of C rank-one pieces:

    W ≈ Σ_c U_c V_cᵀ        V: [d_in, C] (read-in directions)    U: [C, d_out] (write-out directions)

and the layer's forward with a mask m over its pieces is

    x ↦ ((x V) ⊙ m) U + bias          (embedding: x V means V[token ids])

`x V` is the *inner activation* of the subcomponents; the bias stays the target's, not decomposed.

Tied weights: when two targets read one stored tensor (TMS's linear2 is linear1's transpose, an
LM's unembedding may share the embedding), the tensor is decomposed once. The second target uses
the first one's factors, transposed where its weight is the transpose (V₂ = U₁ᵀ, U₂ = V₁ᵀ), and a
gradient through either lands on the same parameters. Ties are found from tensor storage, so no
configuration is needed.

The user's model is never edited: masked forwards swap the target modules' `forward` for the
duration of a `with` block (`nets.sites.replace_forward`) and restore it on exit, also on error.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError, nearest
from anatomist.nets.sites import Site, replace_forward, run_and_capture, run_model

Kind = Literal["linear", "embedding", "conv1d"]


@dataclass(frozen=True)
class Target:
    """One decomposed layer: where it is, what kind, its map's shape, and whose factors it uses."""

    name: str  # module path in model.named_modules()
    kind: Kind
    d_in: int
    d_out: int
    owner: str  # the target whose parameters hold this weight's factors (itself unless tied)
    transposed: bool = False  # tied to the owner's transpose (V = U_ownerᵀ, U = V_ownerᵀ)


def _is_conv1d(module: nn.Module) -> bool:
    # HF's Conv1D, recognised without importing transformers (a slow import)
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def _kind(module: nn.Module) -> Kind | None:
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.Linear):
        return "linear"
    if _is_conv1d(module):
        return "conv1d"
    w = getattr(module, "weight", None)
    if isinstance(w, Tensor) and w.ndim == 2 and hasattr(module, "in_features") and hasattr(module, "out_features"):
        return "linear"  # linear-like, e.g. a tied transpose of another layer
    return None


def layer_weight(module: nn.Module) -> Tensor:
    """A decomposable module's weight as the map y = W x: `[d_out, d_in]` (a view, not a copy)."""
    kind = _kind(module)
    if kind is None:
        raise AnatomistError(f"{type(module).__name__} is not a Linear, Embedding or Conv1D layer")
    w = module.weight
    assert isinstance(w, Tensor)
    return w if kind == "linear" else w.T


def _same_storage(a: Tensor, b: Tensor) -> bool:
    return (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.numel() == b.numel()
    )


def find_targets(model: nn.Module, patterns: Sequence[str] | str) -> list[Target]:
    """The decomposable layers whose names match any fnmatch pattern (an exact name is a pattern too).

    A wildcard pattern skips the non-decomposable modules it also matches (activations, containers).
    Errors: a pattern that matches no module (naming the nearest module names), a match that is not
    a Linear/Embedding/Conv1D layer, or a model with no such layer at all.
    """
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise AnatomistError("no target patterns given (e.g. ['layers.*.mlp_in'])")
    modules = dict(model.named_modules())
    decomposable = [n for n, m in modules.items() if n and _kind(m) is not None]
    if not decomposable:
        raise AnatomistError(
            f"{type(model).__name__} has no decomposable layer (nn.Linear, nn.Embedding or HF Conv1D); "
            "parameter decomposition needs at least one"
        )
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in modules if n and fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = nearest(pattern, decomposable)
            hint = f"; nearest decomposable layers: {', '.join(close)}" if close else ""
            raise AnatomistError(f"target pattern '{pattern}' matches no module of {type(model).__name__}{hint}")
        usable = [n for n in hits if _kind(modules[n]) is not None]
        if not usable:  # a wildcard may also match containers and activations; it must match a layer
            n = hits[0]
            inside = [d for d in decomposable if d.startswith(n + ".")][:5]
            hint = f"; its decomposable sublayers: {', '.join(inside)}" if inside else ""
            raise AnatomistError(
                f"target '{n}' (matched by '{pattern}') is a {type(modules[n]).__name__}, "
                f"not a Linear, Embedding or Conv1D layer{hint}"
            )
        chosen += [n for n in usable if n not in chosen]
    order = {n: i for i, n in enumerate(modules)}
    chosen.sort(key=order.__getitem__)

    targets: list[Target] = []
    for name in chosen:
        module = modules[name]
        kind = _kind(module)
        assert kind is not None
        w = layer_weight(module)
        d_out, d_in = w.shape
        owner, transposed = name, False
        for prev in targets:
            if prev.owner != prev.name:
                continue
            pw = layer_weight(modules[prev.name])
            if not _same_storage(w, pw):
                continue
            if w.shape == pw.shape and w.stride() == pw.stride():
                owner = prev.name
                break
            if w.shape == pw.shape[::-1] and w.stride() == pw.stride()[::-1]:
                owner, transposed = prev.name, True
                break
        if kind == "embedding" and getattr(module, "max_norm", None) is not None:
            raise AnatomistError(f"target '{name}': nn.Embedding with max_norm renormalises its rows; not supported")
        targets.append(Target(name, kind, int(d_in), int(d_out), owner, transposed))
    return targets


def components_per_target(targets: Sequence[Target], C: int, C_per_module: Mapping[str, int]) -> dict[str, int]:
    """C of each target: that of the first `C_per_module` pattern (fnmatch) its name matches, else `C`.

    A tied target has its owner's C (one set of factors). Errors: a pattern that matches no target, a C < 1,
    or tied targets that the patterns give different C.
    """
    for pattern, c in C_per_module.items():
        if not any(fnmatch.fnmatchcase(t.name, pattern) for t in targets):
            names = [t.name for t in targets]
            raise AnatomistError(f"C_per_module pattern '{pattern}' matches no target; targets: {names}")
        if c < 1:
            raise AnatomistError(f"C_per_module['{pattern}'] must be positive, got {c}")
    wanted = {t.name: next((c for p, c in C_per_module.items() if fnmatch.fnmatchcase(t.name, p)), C) for t in targets}
    for t in targets:
        if t.owner != t.name and wanted[t.name] != wanted[t.owner]:
            raise AnatomistError(
                f"targets '{t.name}' and '{t.owner}' share one weight (tied), so one C, but C_per_module gives them "
                f"{wanted[t.name]} and {wanted[t.owner]}"
            )
    return wanted


def model_output(out: Any) -> Tensor:
    """The tensor a decomposition compares: the output itself, `.logits` of an HF output, or the first element."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    raise AnatomistError(f"cannot find an output tensor in a {type(out).__name__} (expected a Tensor or .logits)")


def _key(name: str) -> str:
    return name.replace(".", "-")  # ParameterDict keys may not contain dots


class Decomposition(nn.Module):
    """C rank-one subcomponents for each target layer of `model`, and masked forwards through them.

    Only the factors are parameters of this module (the model is referenced, not registered), so
    `state_dict()` holds just `V.<target>` and `U.<target>` for each owner of a weight.
    """

    model: nn.Module

    def __init__(
        self,
        model: nn.Module,
        targets: Sequence[str] | str,
        C: int,
        generator: torch.Generator | None = None,
        init: str = "random",
        rank: int = 1,
        C_per_module: Mapping[str, int] | None = None,
    ):
        super().__init__()
        if C < 1:
            raise AnatomistError(f"C (components per layer) must be positive, got {C}")
        object.__setattr__(self, "model", model)  # not a submodule: its weights are the target, not ours
        # C components per layer, each `rank` rank-one subcomponents (SPD: rank 1; APD: component c is
        # subcomponents c·rank … c·rank + rank − 1), so C means the number of components in every method
        self.C, self.rank = C, rank
        self.n_subcomponents = C * rank  # per target unless C_per_module says otherwise: see `n_pieces`
        self.targets: dict[str, Target] = {t.name: t for t in find_targets(model, targets)}
        self._modules_by_name = {t: model.get_submodule(t) for t in self.targets}
        self.C_of = components_per_target(list(self.targets.values()), C, C_per_module or {})
        self.V = nn.ParameterDict()
        self.U = nn.ParameterDict()
        for t in self.targets.values():
            if t.owner == t.name:
                w, k = self.target_weight(t.name), self.n_pieces(t.name)
                self.V[_key(t.name)] = nn.Parameter(torch.empty(t.d_in, k, dtype=w.dtype, device=w.device))
                self.U[_key(t.name)] = nn.Parameter(torch.empty(k, t.d_out, dtype=w.dtype, device=w.device))
        self.reset_parameters(generator, init)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None, init: str = "random") -> None:
        """Start the factors: `"random"` (the SPD paper's), `"svd"` or `"xavier"` (the APD reference's).

        random: unit-norm random directions, each piece scaled by its overlap u_cᵀ W v_c with the
        target weight, so every piece starts with the size of the part of W it points along.
        svd: the weight's top singular pieces σ_k u_k v_kᵀ (exact when C ≥ rank W; the rest get
        small random pieces). Not in the paper: a faster start on real models, where matching the
        weights from a random start costs thousands of steps.
        xavier: every factor entry N(0, 2 / (fan_in + fan_out)) of its component's A [d_in, rank] or
        B [rank, d_out], unrelated to W (the APD reference's start).
        """
        for t in self.owners():
            V, U = self.V[_key(t.name)], self.U[_key(t.name)]
            W = self.target_weight(t.name)  # [d_out, d_in]
            where = generator.device if generator is not None else V.device
            V.copy_(torch.randn(V.shape, generator=generator, device=where, dtype=V.dtype))
            U.copy_(torch.randn(U.shape, generator=generator, device=where, dtype=U.dtype))
            V.div_(V.norm(dim=0, keepdim=True))
            U.div_(U.norm(dim=1, keepdim=True))
            overlap = ((U @ W) * V.T).sum(1)  # [C]: u_cᵀ W v_c
            U.mul_(overlap[:, None])
            if init == "xavier":  # the APD reference's: each component's A [d_in, r] and B [r, d_out] xavier-normal
                r = self.rank
                V.copy_(torch.randn(V.shape, generator=generator, device=where, dtype=V.dtype))
                U.copy_(torch.randn(U.shape, generator=generator, device=where, dtype=U.dtype))
                V.mul_((2 / (t.d_in + r)) ** 0.5)
                U.mul_((2 / (r + t.d_out)) ** 0.5)
            elif init == "svd":
                u, sv, vh = torch.linalg.svd(W, full_matrices=False)
                k = min(self.n_pieces(t.name), int((sv > sv[0] * 1e-6).sum()))
                U[k:] *= 1e-3  # beyond the rank: tiny random pieces, free to grow
                V[:, :k] = vh[:k].T
                U[:k] = (u[:, :k] * sv[:k]).T
            elif init != "random":
                raise AnatomistError(f"init must be 'random', 'svd' or 'xavier', got '{init}'")

    # --- what a decomposition is made of ------------------------------------------------------------

    def n_pieces(self, name: str) -> int:
        """Rank-one subcomponents of a target: its C (`C_of`) times the rank of a component."""
        return self.C_of[self.target(name).name] * self.rank

    def owners(self) -> list[Target]:
        """Targets that hold parameters (one per stored weight; tied targets reuse an owner's)."""
        return [t for t in self.targets.values() if t.owner == t.name]

    def target(self, name: str) -> Target:
        if name not in self.targets:
            close = nearest(name, self.targets)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AnatomistError(f"'{name}' is not a target of this decomposition{hint}; targets: {list(self.targets)}")
        return self.targets[name]

    def module(self, name: str) -> nn.Module:
        return self._modules_by_name[self.target(name).name]

    def factors(self, name: str) -> tuple[Tensor, Tensor]:
        """`(V [d_in, C], U [C, d_out])` of a target; a tied target's are views of its owner's."""
        t = self.target(name)
        V, U = self.V[_key(t.owner)], self.U[_key(t.owner)]
        return (U.T, V.T) if t.transposed else (V, U)

    def matrices(self, name: str) -> Tensor:
        """The subcomponents as full matrices, `[C, d_out, d_in]` in `nn.Linear` layout (y = W x)."""
        V, U = self.factors(name)
        return U[:, :, None] * V.T[:, None, :]

    def weight(self, name: str) -> Tensor:
        """Σ_c U_c V_cᵀ, `[d_out, d_in]`."""
        V, U = self.factors(name)
        return U.T @ V.T

    def target_weight(self, name: str) -> Tensor:
        """The target layer's own weight as the map y = W x, `[d_out, d_in]`, detached."""
        return layer_weight(self.module(name)).detach()

    def bias(self, name: str) -> Tensor | None:
        b = getattr(self.module(name), "bias", None)
        return b if isinstance(b, Tensor) else None

    def n_target_params(self) -> int:
        """Entries of the decomposed weights, each stored weight counted once."""
        return sum(t.d_in * t.d_out for t in self.owners())

    # --- forwards -----------------------------------------------------------------------------------

    def inner(self, name: str, x: Tensor) -> Tensor:
        """Inner activations `x V` of a target's subcomponents for its layer input x: `[..., C]`."""
        V, _ = self.factors(name)
        if self.target(name).kind == "embedding":
            return V[x]
        return x @ V

    def weight_delta(self, name: str) -> Tensor:
        """W − Σ_c U_c V_cᵀ, `[d_out, d_in]`: what the subcomponents miss (gradients reach the factors)."""
        return self.target_weight(name) - self.weight(name)

    def delta_forward(self, name: str, x: Tensor) -> Tensor:
        """The layer's input through W − ΣUVᵀ alone (no bias): `[..., d_out]`."""
        t = self.target(name)
        if t.kind == "embedding":
            return self.weight_delta(name).T[x]
        rows = x.numel() // x.shape[-1]
        if rows * (t.d_in + t.d_out) < t.d_in * t.d_out:
            # few inputs through a large matrix (an LM's MLP, 32 tokens): x Wᵀ − (x V) U never forms the
            # [d_out, d_in] product UᵀVᵀ, which costs C·d_in·d_out per masked forward and again in its backward
            V, U = self.factors(name)
            return x @ self.target_weight(name).T - (x @ V) @ U
        return x @ self.weight_delta(name).T

    def layer_forward(self, name: str, x: Tensor, mask: Tensor | None, delta_mask: Tensor | None = None) -> Tensor:
        """The target layer computed from its subcomponents: ((x V) ⊙ mask) U + bias.

        With `delta_mask` (`[...]`, the inputs' leading dims, or a scalar tensor) the *delta component*
        W − ΣUVᵀ is added, scaled by it: with mask and delta mask 1 the layer is exactly the target's.
        """
        out = self._components_forward(name, x, mask)
        if delta_mask is None:
            return out
        return out + self.delta_forward(name, x) * delta_mask[..., None]

    def _components_forward(self, name: str, x: Tensor, mask: Tensor | None) -> Tensor:
        _, U = self.factors(name)
        acts = self.inner(name, x)  # [..., C]
        if mask is not None:
            if mask.shape[-1] != acts.shape[-1] or mask.ndim > acts.ndim:
                raise AnatomistError(
                    f"mask for '{name}' has shape {list(mask.shape)}; expected [..., {acts.shape[-1]}] "
                    f"matching the inner activations {list(acts.shape)}"
                )
            acts = acts * mask
        bias = self.bias(name)
        if bias is None:
            return acts @ U
        if acts.ndim == 2:
            return torch.addmm(bias, acts, U)  # one fused kernel on the common [batch, C] path
        return acts @ U + bias

    @contextmanager
    def masked(
        self, masks: Mapping[str, Tensor | None], delta_masks: Mapping[str, Tensor] | None = None
    ) -> Iterator[nn.Module]:
        """Inside the block, each target named in `masks` runs through its subcomponents.

        A mask is `[..., C]` (broadcast against the inner activations, e.g. `[batch, C]` or
        `[batch, seq, C]`); `None` means all subcomponents unmasked. Targets not named keep their
        original weight. `delta_masks` (`[...]` per target) add the delta component W − ΣUVᵀ to the
        masked targets they name. Yields the model; `nets.sites.replace_forward` restores every forward on exit.
        """
        deltas = delta_masks or {}
        forwards = {
            self.target(name).name: self._masked_forward(name, mask, deltas.get(name)) for name, mask in masks.items()
        }
        with replace_forward(self.model, forwards) as model:
            yield model

    def _masked_forward(self, name: str, mask: Tensor | None, delta_mask: Tensor | None) -> Callable[..., Tensor]:
        def forward(x: Tensor, *_: Any, **__: Any) -> Tensor:
            return self.layer_forward(name, x, mask, delta_mask)

        return forward

    def run_with_masks(
        self, inputs: Any, masks: Mapping[str, Tensor | None], delta_masks: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """The model's output tensor on `inputs` with the given targets masked (see `masked`)."""
        with self.masked(masks, delta_masks):
            return model_output(run_model(self.model, inputs))

    def run_capturing_inputs(self, inputs: Any, names: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The unchanged model's output and the input of each target layer (its last call), in one forward."""
        names = list(self.targets) if names is None else list(names)
        sites = {name: Site(self.target(name).name, "input") for name in names}
        out, seen = run_and_capture(self.model, inputs, list(sites.values()))
        return model_output(out), {name: seen[site] for name, site in sites.items()}

    def faithfulness_loss(self) -> Tensor:
        """‖W − Σ_c U_c V_cᵀ‖² summed over the stored weights, divided by their number of entries."""
        total = sum(((self.target_weight(t.name) - self.weight(t.name)) ** 2).sum() for t in self.owners())
        assert isinstance(total, Tensor)
        return total / self.n_target_params()
