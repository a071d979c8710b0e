"""Feature patching: how few units of a dictionary carry a behaviour from one prompt to another.

Cunningham et al. 2023 ("Sparse Autoencoders Find Highly Interpretable Features in Language Models", section 5)
compare dictionaries by how many of their features one must patch from a counterfactual run into a clean run to
move the model's prediction to the counterfactual's: a dictionary whose features are the model's own variables
needs few. This module does it for any dictionary (SAE, transcoder, or a `fit_basis` basis) at any site.

Nodes. A dictionary reads a site (`read`) and writes one (`write`; the same site for an SAE or a basis, the
MLP's output for a transcoder reading its input). The written site's value splits into the features' part and
an error node, kept as its own node (Marks et al. 2024, "Sparse Feature Circuits") so that the nodes always sum to
the model's real value:

    y = decode(f) + e,   f = encode(x_read),   e = y - decode(f)       (decode(f) = f @ W_dec + b_dec)

Units. One unit is one node at one position: a feature i at position p, or the error at position p. Clean and
counterfactual prompts of a pair have one length, so positions align. Per-position units are what the paper's
counts are natural in (a feature that matters at S2 need not matter at the last token), and patching every unit
of every position reproduces the counterfactual's value exactly. A prompt of L tokens has L (d_sae + 1) units.

Activation patching of a set U of units into the clean run (through `splice`, at the written site):

    y_patched = y_clean + sum_{(p, i) in U} (f_cf[p, i] - f_clean[p, i]) W_dec[i]
                        + sum_{(p, err) in U} (e_cf[p] - e_clean[p])

so nothing patched gives the clean value and everything patched the counterfactual's (up to rounding). With the
value spliced in, the encoder does not run again: a unit's effect is what its difference does downstream.

Attribution patching (Nanda 2023; Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit
Discovery") estimates every unit's effect on a metric m at once, to first order, from one backward pass of the clean
run:

    effect(p, i)   ~ (dm/dy[p] . W_dec[i]) (f_cf[p, i] - f_clean[p, i])
    effect(p, err) ~ dm/dy[p] . (e_cf[p] - e_clean[p])

Where m is linear in the site's value the estimate is exact.

The curve: per prompt, order the units by their estimated effect (|attribution|, or signed towards the
counterfactual; optionally the top candidates re-measured one at a time by activation patching), patch the first
n for n on a grid (0, 1, 2, 4, ..., all), and record the metric and KL(patched || counterfactual). Its fraction of
the behaviour change against n says how localised the behaviour is in that dictionary's units.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.evaluate.dictionary import check_width
from anatomist.features.base import SparseDictionary
from anatomist.interpret.tasks import (
    PairBatch,
    PromptPair,
    Task,
    batches,
    fraction_of_change,
    kl_to,
    last_position,
)
from anatomist.nets.sites import Site, primary, run_and_capture, run_model, splice

Order = Literal["abs", "signed"]
ErrorNodes = Literal["unit", "never", "always"]  # how a curve treats the error nodes
# (last-position logits [r, vocab], rows [r] of the batch they belong to) -> a score per row [r]
Score = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Decomposition:
    """A dictionary placed in a model: features read at `read`, the value at `write` = decode(features) + error."""

    dictionary: SparseDictionary
    read: Site
    write: Site
    name: str = ""

    @classmethod
    def at(cls, dictionary: SparseDictionary, site: Site | str, target_site: Site | str | None = None,
           name: str = "") -> Decomposition:
        """An SAE or basis at `site`, or a transcoder from `site` to `target_site`."""
        read = Site.parse(site)
        write = Site.parse(target_site) if target_site is not None else read
        label = name or dictionary.arch
        if dictionary.cfg.is_transcoder and write == read:
            raise AnatomistError(f"dictionary '{label}' is a transcoder (d_out {dictionary.cfg.d_out}): name the "
                                 "site it predicts (target_site)")
        if not dictionary.cfg.is_transcoder and write != read:
            raise AnatomistError(f"dictionary '{label}' reconstructs the site it reads ('{read}'); target_site "
                                 f"'{write}' is for transcoders")
        return cls(dictionary, read, write, label)

    @property
    def sites(self) -> list[Site]:
        return [self.read] if self.read == self.write else [self.read, self.write]


@dataclass(frozen=True)
class Nodes:
    """One run's nodes at a decomposition: the written site's value, the features and the error [b, L, .]."""

    value: Tensor  # [b, L, d_out]
    features: Tensor  # [b, L, d_sae]
    error: Tensor  # [b, L, d_out]


def _sequence_value(value: Tensor, site: Site) -> Tensor:
    if value.ndim != 3:
        raise AnatomistError(f"site '{site}' has shape {list(value.shape)}; feature patching needs a sequence "
                             "site [batch, positions, width] (a decoder layer, its MLP or attention)")
    return value


def nodes_of(dec: Decomposition, values: dict[Site, Tensor]) -> Nodes:
    """Split a run's site values into the decomposition's nodes; widths that do not fit are an error."""
    x = _sequence_value(values[dec.read], dec.read)
    y = _sequence_value(values[dec.write], dec.write)
    check_width(dec.dictionary, dec.read, x.shape[-1], "input")
    check_width(dec.dictionary, dec.write, y.shape[-1], "output")
    with torch.no_grad():
        features = dec.dictionary.encode(x)
        error = y.to(features.dtype) - dec.dictionary.decode(features)
    return Nodes(y.detach(), features, error)


@torch.no_grad()
def run_nodes(model: nn.Module, ids: Tensor, lengths: Tensor, dec: Decomposition) -> tuple[Tensor, Nodes]:
    """Each prompt's last-token logits [b, vocab] and the decomposition's nodes of a run on `ids` [b, seq]."""
    inputs, kept = _last_token_inputs(model, ids, lengths)
    out, values = run_and_capture(model, inputs, dec.sites, grad=False)
    return _last_logits(out, lengths, kept), nodes_of(dec, values)


def _last_token_inputs(model: nn.Module, ids: Tensor, lengths: Tensor) -> tuple[Any, Tensor | None]:
    """The model's inputs, asking a Hugging Face causal LM for logits at the prompts' last tokens only
    (`logits_to_keep`: the unembedding of every position is a fifth of a small model's forward)."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return ids, None
    kept = (lengths - 1).unique()
    return {"input_ids": ids, "logits_to_keep": kept, "use_cache": False}, kept


def _last_logits(output: Any, lengths: Tensor, kept: Tensor | None) -> Tensor:
    """Each prompt's last-token logits [b, vocab] from a model output (all positions, or the `kept` ones)."""
    logits = primary(output)
    if kept is None:
        return last_position(logits, lengths).float()
    column = torch.searchsorted(kept, lengths - 1)
    return logits[torch.arange(len(logits), device=logits.device), column].float()


def forward_last(model: nn.Module, ids: Tensor, lengths: Tensor) -> Tensor:
    """Each prompt's last-token logits [b, vocab] of a right-padded batch `ids` [b, seq]."""
    inputs, kept = _last_token_inputs(model, ids, lengths)
    return _last_logits(run_model(model, inputs), lengths, kept)


@dataclass(frozen=True)
class UnitDeltas:
    """What each unit adds to the clean value when patched: feature differences times decoder rows, error
    differences. Unit index within a position: 0..d_sae-1 the features, d_sae the error."""

    clean: Tensor  # [b, L, d_out] the clean run's value at the written site
    features: Tensor  # [b, L, d_sae] f_cf - f_clean
    error: Tensor  # [b, L, d_out] e_cf - e_clean
    decoder: Tensor  # [d_sae, d_out]

    @classmethod
    def between(cls, clean: Nodes, counterfactual: Nodes, dictionary: SparseDictionary,
                lengths: Tensor) -> UnitDeltas:
        """The differences of two runs' nodes; zero at padding (positions at or after a prompt's `lengths`)."""
        if clean.features.shape != counterfactual.features.shape:
            raise AnatomistError(f"clean and counterfactual runs differ in shape ({list(clean.features.shape)} vs "
                                 f"{list(counterfactual.features.shape)}); a pair's prompts need one length")
        positions = torch.arange(clean.features.shape[1], device=lengths.device)
        real = (positions[None] < lengths[:, None]).to(clean.features.device)[..., None]
        return cls(clean.value.to(clean.features.dtype), (counterfactual.features - clean.features) * real,
                   (counterfactual.error - clean.error) * real, dictionary.W_dec.detach())

    @property
    def units_per_position(self) -> int:
        return self.features.shape[-1] + 1

    def patched(self, mask: Tensor) -> Tensor:
        """The written site's value with the units of `mask` [b, L, d_sae + 1] (bool) patched."""
        m = mask.to(self.features.dtype)
        return self.clean + (self.features * m[..., :-1]) @ self.decoder + self.error * m[..., -1:]

    def unit_vectors(self, rows: Tensor, units: Tensor) -> tuple[Tensor, Tensor]:
        """(positions [r], added vectors [r, d_out]) of flat unit indices `units` [r] of prompts `rows` [r]."""
        pos, node = units // self.units_per_position, units % self.units_per_position
        is_error = node == self.features.shape[-1]
        feature = node.clamp(max=self.features.shape[-1] - 1)
        coefficient = self.features[rows, pos, feature]
        vectors = coefficient[:, None] * self.decoder[feature]
        return pos, torch.where(is_error[:, None], self.error[rows, pos], vectors)

    def active(self) -> Tensor:
        """Which units [b, L, d_sae + 1] differ between the runs (patching the others changes nothing)."""
        return torch.cat([self.features != 0, (self.error != 0).any(-1, keepdim=True)], -1)

    def all_features(self) -> Tensor:
        mask = torch.ones(*self.features.shape[:2], self.units_per_position, dtype=torch.bool)
        mask[..., -1] = False
        return mask

    def all_errors(self) -> Tensor:
        mask = torch.zeros(*self.features.shape[:2], self.units_per_position, dtype=torch.bool)
        mask[..., -1] = True
        return mask

    def at_positions(self, positions: Tensor) -> Tensor:
        """Every unit at one position per prompt (`positions` [b]), e.g. each prompt's last token."""
        mask = torch.zeros(*self.features.shape[:2], self.units_per_position, dtype=torch.bool)
        mask[torch.arange(len(mask)), positions.cpu()] = True
        return mask


def patched_logits(model: nn.Module, ids: Tensor, lengths: Tensor, site: Site, value: Tensor) -> Tensor:
    """Each prompt's last-token logits [b, vocab] of a run whose `site` value is replaced by `value`."""
    with splice(model, {site: lambda v: value.to(v.dtype)}):
        return forward_last(model, ids, lengths)


def attribute(model: nn.Module, ids: Tensor, lengths: Tensor, site: Site, deltas: UnitDeltas,
              score: Score) -> Tensor:
    """Attribution patching: each unit's first-order effect on `score` [b, L, d_sae + 1], one backward pass."""
    leaf = deltas.clean.detach().clone().requires_grad_(True)
    with torch.enable_grad(), splice(model, {site: lambda v: leaf.to(v.dtype)}):
        last = forward_last(model, ids, lengths)
        total = score(last, torch.arange(len(ids))).sum()  # prompts are independent: one backward for all
    (grad,) = torch.autograd.grad(total, leaf)
    features = (grad @ deltas.decoder.T) * deltas.features
    error = (grad * deltas.error).sum(-1, keepdim=True)
    return torch.cat([features, error], -1)


@torch.no_grad()
def single_unit_effects(model: nn.Module, ids: Tensor, lengths: Tensor, site: Site, deltas: UnitDeltas,
                        units: Tensor, score: Score, clean_score: Tensor, batch_size: int) -> Tensor:
    """Activation patching of one unit at a time: score(patched) - score(clean) for units [b, k] (flat indices)."""
    rows = torch.arange(len(ids)).repeat_interleave(units.shape[1])
    flat = units.reshape(-1)
    effects = []
    for start in range(0, len(flat), batch_size):
        r, u = rows[start:start + batch_size], flat[start:start + batch_size]
        pos, vectors = deltas.unit_vectors(r, u)
        value = deltas.clean[r].clone()
        value[torch.arange(len(r)), pos] += vectors
        effects.append(score(patched_logits(model, ids[r], lengths[r], site, value), r) - clean_score[r])
    return torch.cat(effects).reshape(units.shape)


def unit_ranks(estimates: Tensor, active: Tensor, order: Order, direction: Tensor) -> Tensor:
    """Each unit's rank [b, n_units] (0 = patched first) by its estimated effect [b, L, d_sae + 1]: by size
    ("abs"), or most towards the counterfactual first ("signed"; `direction` [b] is the sign of the change).
    Units that do not differ between the runs (`active` False) come last, so the first n_active are the rest."""
    flat = estimates.reshape(len(estimates), -1)
    key = flat.abs() if order == "abs" else flat * direction[:, None]
    key = key.masked_fill(~active.reshape(key.shape), -torch.inf)
    by_key = key.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(by_key)
    ranks.scatter_(-1, by_key, torch.arange(flat.shape[1]).expand_as(by_key).contiguous())
    return ranks


def count_grid(n_units: int) -> list[int]:
    """0, 1, 2, 4, ... below `n_units`, then `n_units` (all)."""
    counts, n = [0], 1
    while n < n_units:
        counts.append(n)
        n *= 2
    return [*counts, n_units] if n_units > 0 else counts


@dataclass
class Curve:
    """Behaviour against the number of units patched for one decomposition, per prompt.

    `metric` and `kl` are [n_counts, n_prompts]; a count above a prompt's number of units patches all of them.
    `baselines` holds whole-node patches: "site" (every unit: the site's value becomes the counterfactual's),
    "features" (every feature, no error), "error" (the error nodes only) and "last_token" (every unit at the
    prompt's last token: whether the behaviour has reached the answer's position at this site).
    `attribution`/`effect` pair the estimate and the measured single-unit effect of re-measured candidates.
    """

    name: str
    counts: list[int]
    clean: Tensor  # [N] task metric of the clean runs
    counterfactual: Tensor  # [N] task metric (the clean prompt's answers) of the counterfactual runs
    kl_clean: Tensor  # [N] KL(clean || counterfactual)
    metric: Tensor  # [C, N]
    kl: Tensor  # [C, N] KL(patched || counterfactual)
    n_units: Tensor  # [N]
    baselines: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # name -> (metric [N], kl [N])
    attribution: Tensor = field(default_factory=lambda: torch.zeros(0))
    effect: Tensor = field(default_factory=lambda: torch.zeros(0))

    def fraction(self, metric: Tensor, of_site: bool = False) -> float:
        """A patch's fraction of the change of the task metric (of the means over prompts): of the change the
        counterfactual makes, or (`of_site`) of the change patching the whole site makes. At a site that does not
        cut the model (an MLP's output, a transcoder's) the whole site carries only part of the change."""
        end = self._site()[0] if of_site else self.counterfactual
        return fraction_of_change(float(metric.mean()), float(self.clean.mean()), float(end.mean()))

    def kl_fraction(self, kl: Tensor, of_site: bool = False) -> float:
        """The same with KL(. || counterfactual) as the metric: 1 - mean KL(patched || cf) / mean KL(clean || cf)."""
        end = float(self._site()[1].mean()) if of_site else 0.0
        return fraction_of_change(float(kl.mean()), float(self.kl_clean.mean()), end)

    def _site(self) -> tuple[Tensor, Tensor]:
        if "site" not in self.baselines:
            raise AnatomistError(f"curve '{self.name}' has no whole-site patch to compare with")
        return self.baselines["site"]

    def rows(self) -> dict[str, dict[str, float | int]]:
        """The curve as a table: one row per count (with fractions of the whole site's effect when known)."""
        table: dict[str, dict[str, float | int]] = {}
        for n, m, k in zip(self.counts, self.metric, self.kl, strict=True):
            row = {"units": n, "metric": float(m.mean()), "fraction": self.fraction(m), "kl": float(k.mean()),
                   "kl_fraction": self.kl_fraction(k)}
            if "site" in self.baselines:
                row.update(fraction_of_site=self.fraction(m, True), kl_fraction_of_site=self.kl_fraction(k, True))
            table[str(n)] = row
        return table

    def units_to_reach(self, target: float, kl: bool = False, of_site: bool = False) -> int | None:
        """The first count of the grid whose fraction (of the logit difference or of KL; of the counterfactual's
        change or of the whole site's) reaches `target`; None if none does."""
        for n, m, k in zip(self.counts, self.metric, self.kl, strict=True):
            if (self.kl_fraction(k, of_site) if kl else self.fraction(m, of_site)) >= target:
                return n
        return None


@dataclass(frozen=True)
class CurveSpec:
    """How to draw a curve: the count grid (None: powers of two up to all units), the unit order, how many of
    each prompt's top-estimated units to re-measure by activation patching (0: none), the batch size, the score
    attributed, and the error nodes: units like the features ("unit"), never patched ("never": the curve ends at
    the features' share), or always patched and the count made of features only ("always")."""

    counts: Sequence[int] | None = None
    order: Order = "abs"
    exact_candidates: int = 0
    batch_size: int = 16
    attribute_kl: bool = False  # order by the attribution of -KL(patched || cf) instead of the task metric
    error_nodes: ErrorNodes = "unit"


def _task_score(task: Task, batch: PairBatch) -> Score:
    def score(last: Tensor, rows: Tensor) -> Tensor:
        return task.metric(last, batch.rows(rows.to(batch.clean.device)))

    return score


def _closeness_score(cf_last: Tensor) -> Score:
    """-KL(patched || counterfactual): larger is closer to the counterfactual's prediction."""
    return lambda last, rows: -kl_to(last, cf_last[rows.to(cf_last.device)])


@dataclass
class _Accumulator:
    clean: list[Tensor] = field(default_factory=list)
    counterfactual: list[Tensor] = field(default_factory=list)
    kl_clean: list[Tensor] = field(default_factory=list)
    metric: list[Tensor] = field(default_factory=list)
    kl: list[Tensor] = field(default_factory=list)
    n_units: list[Tensor] = field(default_factory=list)
    index: list[Tensor] = field(default_factory=list)
    baselines: dict[str, tuple[list[Tensor], list[Tensor]]] = field(default_factory=dict)
    attribution: list[Tensor] = field(default_factory=list)
    effect: list[Tensor] = field(default_factory=list)


def localisation_curve(model: nn.Module, pairs: Sequence[PromptPair], task: Task, dec: Decomposition,
                       spec: CurveSpec = CurveSpec()) -> Curve:
    """Behaviour change against the number of `dec`'s units patched, over every pair (batched by length)."""
    if not pairs:
        raise AnatomistError("localisation_curve: no prompt pairs")
    device = next(iter(model.parameters())).device
    most_units = max(len(p.clean) for p in pairs) * (dec.dictionary.cfg.d_sae + 1)
    grid = list(spec.counts) if spec.counts is not None else count_grid(most_units)
    acc = _Accumulator()
    for batch in batches(pairs, spec.batch_size):
        _run_batch(model, batch.to(device), task, dec, spec, grid, acc)
    order = torch.cat(acc.index).argsort()  # back to the task's order

    def cat(parts: list[Tensor], dim: int = 0) -> Tensor:
        return torch.cat(parts, dim).index_select(dim, order)

    return Curve(dec.name, grid, cat(acc.clean), cat(acc.counterfactual), cat(acc.kl_clean), cat(acc.metric, 1),
                 cat(acc.kl, 1), cat(acc.n_units), {k: (cat(m), cat(k_)) for k, (m, k_) in acc.baselines.items()},
                 torch.cat(acc.attribution) if acc.attribution else torch.zeros(0),
                 torch.cat(acc.effect) if acc.effect else torch.zeros(0))


def _run_batch(model: nn.Module, batch: PairBatch, task: Task, dec: Decomposition, spec: CurveSpec,
               grid: list[int], acc: _Accumulator) -> None:
    clean_last, clean_nodes = run_nodes(model, batch.clean, batch.lengths, dec)
    cf_last, cf_nodes = run_nodes(model, batch.counterfactual, batch.lengths, dec)
    deltas = UnitDeltas.between(clean_nodes, cf_nodes, dec.dictionary, batch.lengths)
    score, rows = _task_score(task, batch), torch.arange(len(batch))
    clean, counterfactual = score(clean_last, rows).cpu(), score(cf_last, rows).cpu()
    ranking_score = _closeness_score(cf_last) if spec.attribute_kl else score
    estimates = attribute(model, batch.clean, batch.lengths, dec.write, deltas, ranking_score)
    if spec.exact_candidates > 0:
        estimates = _remeasure(model, batch, dec, deltas, estimates, ranking_score,
                               ranking_score(clean_last, rows), spec, acc)
    direction = torch.ones(len(batch)) if spec.attribute_kl else torch.sign(counterfactual - clean)

    def outcome(mask: Tensor) -> tuple[Tensor, Tensor]:
        last = patched_logits(model, batch.clean, batch.lengths, dec.write,
                              deltas.patched(mask.to(deltas.clean.device)))
        return score(last, rows).cpu(), kl_to(last, cf_last).cpu()

    with torch.no_grad():
        masks = _count_masks(deltas, estimates, spec, direction.to(estimates.device), grid)
        done = {n: outcome(mask) for n, mask in masks.items()}
        points = [done[min(n, max(masks))] for n in grid]
        active = deltas.active()
        site = next((done[n] for n, mask in masks.items() if torch.equal(mask, active)), None) or outcome(active)
        wholes = {"site": site, "features": outcome(deltas.all_features()), "error": outcome(deltas.all_errors()),
                  "last_token": outcome(deltas.at_positions(batch.lengths - 1))}
        for name, (m, k) in wholes.items():
            acc.baselines.setdefault(name, ([], []))[0].append(m)
            acc.baselines[name][1].append(k)
    acc.clean.append(clean)
    acc.counterfactual.append(counterfactual)
    acc.kl_clean.append(kl_to(clean_last, cf_last).cpu())
    acc.metric.append(torch.stack([m for m, _ in points]))
    acc.kl.append(torch.stack([k for _, k in points]))
    per_position = deltas.units_per_position - (spec.error_nodes != "unit")  # error nodes not counted as units
    acc.n_units.append(batch.lengths.cpu() * per_position)
    acc.index.append(batch.index)


def _count_masks(deltas: UnitDeltas, estimates: Tensor, spec: CurveSpec, direction: Tensor,
                 grid: list[int]) -> dict[int, Tensor]:
    """The units patched [b, L, d_sae + 1] for each count of the grid, capped at the most units any prompt has
    that differ between its runs (every larger count patches the same: all of them), so each mask runs once.
    Error nodes are units to choose ("unit"), never patched ("never"), or always patched and not counted."""
    errors = deltas.all_errors().to(estimates.device)
    rankable = deltas.active() if spec.error_nodes == "unit" else deltas.active() & ~errors
    forced = errors if spec.error_nodes == "always" else torch.zeros_like(errors)
    ranks = unit_ranks(estimates, rankable, spec.order, direction).reshape(estimates.shape)
    most = int(rankable.reshape(len(rankable), -1).sum(-1).max())
    return {n: ((ranks < n) & rankable) | forced for n in sorted({min(n, most) for n in grid})}


def _remeasure(model: nn.Module, batch: PairBatch, dec: Decomposition, deltas: UnitDeltas, estimates: Tensor,
               score: Score, clean_score: Tensor, spec: CurveSpec, acc: _Accumulator) -> Tensor:
    """The estimates with each prompt's top candidates (by |attribution|) replaced by their measured effects."""
    flat = estimates.reshape(len(batch), -1)
    k = min(spec.exact_candidates, flat.shape[1])
    units = flat.abs().topk(k, dim=-1).indices
    effects = single_unit_effects(model, batch.clean, batch.lengths, dec.write, deltas, units, score, clean_score,
                                  spec.batch_size)
    acc.attribution.append(flat.gather(-1, units).reshape(-1).detach().cpu())
    acc.effect.append(effects.reshape(-1).cpu())
    return flat.scatter(-1, units, effects.to(flat.dtype)).reshape(estimates.shape)


def agreement(attribution: Tensor, effect: Tensor) -> dict[str, Any]:
    """How well attribution patching predicted the measured single-unit effects: sign agreement (over units whose
    effect is not ~0) and Pearson correlation."""
    if attribution.numel() < 2:
        return {}
    moved = effect.abs() > 1e-6 * effect.abs().max().clamp_min(1e-12)
    same = (torch.sign(attribution[moved]) == torch.sign(effect[moved])).float().mean()
    corr = torch.corrcoef(torch.stack([attribution.double(), effect.double()]))[0, 1]
    return {"units": int(attribution.numel()), "sign_agreement": float(same), "pearson": float(corr)}
