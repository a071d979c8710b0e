"""ActivationStore: activations at one or more sites of any model, shuffled, in bounded memory.

One forward per batch of inputs feeds every site at once (`capture(..., stop_early=True)`, so
the forward stops after the last site). Inputs are grouped into *blocks* of `block_seqs`
consecutive sequences (or images); a block is the unit of harvesting and of the disk cache
(one safetensors shard per block). Rows (one per token position, or per image) are shuffled in
*windows*: a window takes blocks in a seeded random order until it holds `buffer_rows` rows,
permutes them, and yields `[batch_size, d]` batches, one tensor per site with rows aligned
across sites (so a transcoder's input and target rows match). Memory is bounded by a window
plus one block; the dataset itself is never held.

Every shuffle is drawn from a torch.Generator seeded by (seed, epoch, window), so the store's
position is four integers (`state_dict()`) and a resumed run sees exactly the same batches.

The disk cache is a folder of `shard_00000.safetensors`, ... plus `manifest.json` (sites,
widths, dtype, rows per shard, a fingerprint of the data, the model name). Shards are written
atomically and the manifest is rewritten after each one, so an interrupted harvest resumes at the
first missing shard; a second run reads everything from disk and never calls the model.

Row layout of a site's value: [batch, d] is one row per example; [batch, pos, d] one row per
position (BOS / padding positions dropped when asked); [batch, C, *spatial] (conv maps) one row
per spatial position with the C channels as features.

Data parallelism: a store made with `rank` r of `world_size` N draws the same global batches of `batch_size` rows
as a store of one process (same windows, same permutations, same position) and yields the r-th of N equal slices
of each, so the N ranks together see every row of every global batch once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json, load_tensors, save_json, save_tensors
from anatomist.core.provenance import weights_hash
from anatomist.nets.sites import Site, capture

MANIFEST = "manifest.json"
_FORMAT = "anatomist-activations/1"


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def to_rows(value: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """A site's value as rows [n, d]; `keep` [batch, pos] (bool) selects positions of [batch, pos, d] values."""
    if value.ndim == 2:
        return value
    if value.ndim == 3:
        return value[keep] if keep is not None else value.reshape(-1, value.shape[-1])
    if value.ndim >= 4:  # conv map [batch, C, *spatial]: one row per spatial position
        return value.movedim(1, -1).reshape(-1, value.shape[1])
    raise AnatomistError(f"cannot make rows of a value of shape {list(value.shape)} (need 2 or more dims)")


def position_mask(
    ids: torch.Tensor, attention_mask: torch.Tensor | None, pad_id: int | None, exclude_bos: bool
) -> torch.Tensor | None:
    """Which positions of [batch, pos] token ids to keep: not padding, not the first (BOS) position."""
    if ids.ndim != 2 or ids.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
        return None  # not token ids (e.g. images): every row is kept
    keep = torch.ones_like(ids, dtype=torch.bool)
    if attention_mask is not None:
        keep &= attention_mask.bool()
    if pad_id is not None:
        keep &= ids != pad_id
    if exclude_bos:
        keep[:, 0] = False
    return keep


def _fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(p).encode())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """Identity of a model's weights: a hash of every byte of every parameter and buffer (names, dtypes, shapes
    included), so any edit gives cached activations a new key. ~0.5 s per GB: far less than one harvest."""
    return weights_hash(model)[:16]


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class ActivationStore:
    """Batches of activations `{site: [batch_size, d]}` from `model` run on `inputs`.

    inputs: token ids [n, seq] (or images [n, ...]); `attention_mask` [n, seq] and `pad_id` mark
    padding, `exclude_bos` drops position 0 of every sequence. With `cache` (a folder) the
    activations are harvested there once and read back from disk afterwards; `model` may then be
    None when the cache is complete (see `from_cache`).
    """

    def __init__(
        self,
        model: nn.Module | None,
        inputs: torch.Tensor | None,
        sites: Sequence[Site | str],
        *,
        attention_mask: torch.Tensor | None = None,
        pad_id: int | None = None,
        exclude_bos: bool = False,
        batch_size: int = 4096,
        buffer_rows: int = 262_144,
        block_seqs: int = 64,
        model_batch_size: int = 8,
        cache: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        model_name: str = "",
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.sites = [Site.parse(s) for s in sites]
        if not self.sites:
            raise AnatomistError("ActivationStore needs at least one site")
        if len(set(self.sites)) != len(self.sites):
            raise AnatomistError(f"ActivationStore: a site is listed twice in {[str(s) for s in self.sites]}")
        if batch_size < 1 or buffer_rows < 1 or block_seqs < 1 or model_batch_size < 1:
            raise AnatomistError("ActivationStore: batch_size, buffer_rows, block_seqs, model_batch_size must be >= 1")
        if not 0 <= rank < world_size or batch_size % world_size:
            raise AnatomistError(f"ActivationStore: batch_size {batch_size} must split evenly over world_size "
                                 f"{world_size}, and rank {rank} must be below it")
        if inputs is not None and len(inputs) == 0:
            raise AnatomistError(f"ActivationStore: no inputs (shape {list(inputs.shape)}): nothing to harvest")
        if attention_mask is not None and inputs is not None and attention_mask.shape != inputs.shape[:2]:
            raise AnatomistError(
                f"attention_mask has shape {list(attention_mask.shape)}, inputs {list(inputs.shape)}: they must match"
            )
        self.attention_mask = attention_mask
        self.pad_id = pad_id
        self.exclude_bos = exclude_bos
        self.batch_size = batch_size
        self.buffer_rows = buffer_rows
        self.block_seqs = block_seqs
        self.model_batch_size = model_batch_size
        self.cache = Path(cache) if cache is not None else None
        self.dtype = dtype
        self.model_name = model_name
        self.seed = seed
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self._manifest: dict[str, Any] | None = None
        self._model_id: str | None = None
        self._pos = {"epoch": 0, "block": 0, "window": 0, "batch": 0}
        if self.cache is not None and (self.cache / MANIFEST).is_file():
            self._manifest = self._check_manifest(load_json(self.cache / MANIFEST))
        elif model is None or inputs is None:
            raise AnatomistError(
                f"ActivationStore: no model/inputs and no harvested cache at {self.cache} ({MANIFEST} missing)"
            )

    @classmethod
    def from_cache(cls, cache: str | Path, **kwargs: Any) -> ActivationStore:
        """Read a harvested cache folder without a model (its manifest names the sites)."""
        manifest = load_json(Path(cache) / MANIFEST)
        if manifest.get("format") != _FORMAT or not manifest.get("complete"):
            raise AnatomistError(f"{Path(cache) / MANIFEST}: not a complete activation cache")
        dtype = getattr(torch, manifest["dtype"])
        return cls(None, None, manifest["sites"], cache=cache, dtype=dtype, **kwargs)

    # ------------------------------------------------------------------------------------------
    # what the data is

    @property
    def n_blocks(self) -> int:
        if self.inputs is None:
            assert self._manifest is not None
            return int(self._manifest["n_blocks"])
        return -(-len(self.inputs) // self.block_seqs)

    def fingerprint(self, sites: Sequence[Site] | None = None) -> str:
        """Identity of what is harvested: the inputs, masks, sites (default: this store's), dtype and blocking
        (not the batch size)."""
        if self.inputs is None:
            assert self._manifest is not None
            return str(self._manifest["fingerprint"])
        return _fingerprint(
            self.inputs, self.attention_mask, self.pad_id, self.exclude_bos, [str(s) for s in sites or self.sites],
            str(self.dtype), self.block_seqs, self.model_name,
        )[:16]

    def cache_key(self) -> str:
        """Name of an automatic cache folder: the data's fingerprint and the model's (every weight), so edited
        weights harvest afresh instead of reading activations of the unedited model."""
        weights = self._weights_id()
        return self.fingerprint() if weights is None else f"{self.fingerprint()}-{weights}"

    def _weights_id(self) -> str | None:
        """The model's fingerprint, computed once per store (hashing every weight takes a while)."""
        if self._model_id is None and self.model is not None:
            self._model_id = model_fingerprint(self.model)
        return self._model_id

    @property
    def harvested(self) -> bool:
        """Whether the cache folder holds every block (read from its manifest when the store was made)."""
        return self._manifest is not None and bool(self._manifest.get("complete"))

    def widths(self) -> dict[Site, int]:
        """Row width d of every site (from the manifest, or one small forward)."""
        if self._manifest is not None and self._manifest.get("widths"):
            return {Site.parse(s): int(w) for s, w in self._manifest["widths"].items()}
        assert self.model is not None and self.inputs is not None
        rows = self._harvest(self.inputs[:1], None if self.attention_mask is None else self.attention_mask[:1])
        return {s: int(r.shape[1]) for s, r in rows.items()}

    def _check_manifest(self, m: dict[str, Any]) -> dict[str, Any]:
        assert self.cache is not None
        path = self.cache / MANIFEST
        if m.get("format") != _FORMAT:
            raise AnatomistError(f"{path}: not an anatomist activation cache (format {m.get('format')!r})")
        cached = [Site.parse(s) for s in m["sites"]]
        if not set(self.sites) <= set(cached):  # a store may read some of a cache's sites (one forward fed them all)
            raise AnatomistError(f"{path}: cache holds sites {m['sites']}, asked for {[str(s) for s in self.sites]}")
        if self.inputs is not None and m["fingerprint"] != self.fingerprint(cached):
            raise AnatomistError(
                f"{path}: cache was harvested from other data/settings (fingerprint {m['fingerprint']}, "
                f"now {self.fingerprint(cached)}); use another cache folder or delete this one"
            )
        if self.model is not None and m.get("model_fingerprint") not in (None, self._weights_id()):
            raise AnatomistError(f"{path}: cache was harvested from another model's weights ({m.get('model')})")
        return m

    # ------------------------------------------------------------------------------------------
    # harvesting

    def _harvest(self, inputs: torch.Tensor, mask: torch.Tensor | None) -> dict[Site, torch.Tensor]:
        """Rows of every site for a few sequences, in `model_batch_size` forwards (one forward feeds all sites)."""
        assert self.model is not None
        dev = next(iter(self.model.parameters()), torch.empty(0)).device
        out: dict[Site, list[torch.Tensor]] = {s: [] for s in self.sites}
        for start in range(0, len(inputs), self.model_batch_size):
            x = inputs[start : start + self.model_batch_size]
            m = None if mask is None else mask[start : start + self.model_batch_size]
            model_in: Any = x.to(dev) if m is None else {"input_ids": x.to(dev), "attention_mask": m.to(dev)}
            values = capture(self.model, model_in, self.sites, stop_early=True)
            keep = position_mask(x, m, self.pad_id, self.exclude_bos)
            for s in self.sites:
                v = values[s]
                if v.ndim == 3 and keep is not None and v.shape[:2] != keep.shape:
                    raise AnatomistError(f"site '{s}' has shape {list(v.shape)}; expected [batch, pos, d] = "
                                         f"{[*keep.shape, 'd']} for token inputs")
                out[s].append(to_rows(v, None if keep is None else keep.to(v.device)).to("cpu", self.dtype))
        return {s: torch.cat(rows) for s, rows in out.items()}

    def _block_inputs(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert self.inputs is not None
        sl = slice(i * self.block_seqs, (i + 1) * self.block_seqs)
        return self.inputs[sl], None if self.attention_mask is None else self.attention_mask[sl]

    def harvest(self) -> Path:
        """Fill the cache folder (resuming after the last complete shard); returns the folder."""
        if self.cache is None:
            raise AnatomistError("ActivationStore.harvest needs a cache folder")
        if self._manifest is not None and self._manifest["complete"]:
            return self.cache
        if self.model is None or self.inputs is None:
            raise AnatomistError(f"{self.cache / MANIFEST}: cache is incomplete and no model/inputs were given")
        if self._manifest is not None and [Site.parse(s) for s in self._manifest["sites"]] != self.sites:
            raise AnatomistError(f"{self.cache / MANIFEST}: cache of sites {self._manifest['sites']} is incomplete; "
                                 "finish its harvest with a store of all those sites before reading some of them")
        from anatomist.core.progress import progress

        m = self._manifest or {
            "format": _FORMAT, "model": self.model_name, "model_fingerprint": self._weights_id(),
            "sites": [str(s) for s in self.sites], "widths": {}, "dtype": str(self.dtype).removeprefix("torch."),
            "fingerprint": self.fingerprint(), "n_blocks": self.n_blocks, "block_seqs": self.block_seqs,
            "exclude_bos": self.exclude_bos, "pad_id": self.pad_id, "rows": [], "complete": False,
        }
        done = len(m["rows"])
        for i in progress(range(done, self.n_blocks), total=self.n_blocks - done, desc="harvest"):
            rows = self._harvest(*self._block_inputs(i))
            save_tensors(self.cache / shard_name(i), {str(s): r for s, r in rows.items()})
            m["widths"] = {str(s): int(r.shape[1]) for s, r in rows.items()}
            m["rows"].append(int(next(iter(rows.values())).shape[0]))
            m["complete"] = len(m["rows"]) == self.n_blocks
            save_json(self.cache / MANIFEST, m)  # after the shard: the manifest never names a missing shard
        self._manifest = m
        return self.cache

    def block(self, i: int) -> dict[Site, torch.Tensor]:
        """All rows of block `i` per site: read from its shard, or harvested now."""
        if self.cache is not None:
            self.harvest()
            assert self._manifest is not None
            path = self.cache / shard_name(i)
            t = load_tensors(path, required=[str(s) for s in self.sites], only=True)
            rows = self._manifest["rows"][i]
            for s in self.sites:
                want = (rows, self._manifest["widths"][str(s)])
                if tuple(t[str(s)].shape) != want:
                    raise AnatomistError(
                        f"{path}: tensor '{s}' has shape {list(t[str(s)].shape)}, manifest says {list(want)}"
                    )
            return {s: t[str(s)] for s in self.sites}
        return self._harvest(*self._block_inputs(i))

    # ------------------------------------------------------------------------------------------
    # iterating

    def state_dict(self) -> dict[str, int]:
        """Position in the stream: resume with `load_state_dict` to get the very same next batches."""
        return dict(self._pos)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._pos = {k: int(state[k]) for k in ("epoch", "block", "window", "batch")}

    def __iter__(self) -> Iterator[dict[Site, torch.Tensor]]:
        """Batches forever (epoch after epoch), from the current position; advances `state_dict()`.

        With `world_size` N, each is this rank's batch_size / N rows of the global batch."""
        share = self.batch_size // self.world_size
        while True:
            pos = self._pos
            fresh = pos["block"] == 0 and pos["batch"] == 0
            order = torch.randperm(self.n_blocks, generator=seeded_generator(self.seed, pos["epoch"]))
            any_batch = False
            while pos["block"] < self.n_blocks:
                window, next_block = self._window(order, pos["block"])
                n = next(iter(window.values())).shape[0]
                perm = torch.randperm(n, generator=seeded_generator(self.seed, pos["epoch"], pos["window"]))
                for b in range(pos["batch"], n // self.batch_size):
                    first = b * self.batch_size + self.rank * share
                    idx = perm[first : first + share]
                    batch = {s: w[idx].to(self.device, torch.float32) for s, w in window.items()}
                    pos["batch"] = b + 1  # counted before the yield: a checkpoint taken now resumes after it
                    any_batch = True
                    yield batch
                pos.update(block=next_block, window=pos["window"] + 1, batch=0)
            if fresh and not any_batch:
                raise AnatomistError(
                    f"ActivationStore: fewer rows than one batch of {self.batch_size} per window "
                    f"(buffer_rows {self.buffer_rows}); use a smaller batch_size or more data"
                )
            pos.update(epoch=pos["epoch"] + 1, block=0, window=0, batch=0)

    def _window(self, order: torch.Tensor, start: int) -> tuple[dict[Site, torch.Tensor], int]:
        """Blocks order[start:] until `buffer_rows` rows are held; returns the rows and the next start."""
        parts: dict[Site, list[torch.Tensor]] = {s: [] for s in self.sites}
        n, i = 0, start
        while i < self.n_blocks and (n < self.buffer_rows or n == 0):
            rows = self.block(int(order[i]))
            for s in self.sites:
                parts[s].append(rows[s])
            n += next(iter(rows.values())).shape[0]
            i += 1
        return {s: torch.cat(p) for s, p in parts.items()}, i

    def rows_in_order(self) -> Iterator[dict[Site, torch.Tensor]]:
        """Every row once, block by block in data order, unshuffled (for evaluation)."""
        for i in range(self.n_blocks):
            yield {s: r.to(self.device, torch.float32) for s, r in self.block(i).items()}
