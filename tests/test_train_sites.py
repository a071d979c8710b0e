"""sae-train-sites: one SAE per site from one shared harvest, each equal to the SAE sae-train trains on that site
alone. (Two ranks, one site each — `distribute_sites` — are tested in tests/test_distributed.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from anatomist import AnatomistError, Site
from anatomist.data.store import ActivationStore
from anatomist.runs import parse_run_config, run
from anatomist.runs.features import site_folder
from conftest import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.randint(1, 50, (20, 8), generator=torch.Generator().manual_seed(2))
SITES = ["model.layers.0", "model.layers.1"]


def sites_config(folder: Path, **kw: Any) -> dict[str, Any]:
    """A tiny sae-train-sites run on a saved 2-layer Llama and a file of token ids."""
    base = dict(kind="sae-train-sites", model=str(folder / "model"), sites=SITES, steps=6, batch_size=32, lr=3e-3,
                log_every=2, eval_every=3, checkpoint_every=3, seed=4, sae=dict(arch="topk", d_in=16, d_sae=32, k=4),
                data=dict(inputs=str(folder / "ids.safetensors"), cache=str(folder / "shared"), block_seqs=4,
                          buffer_rows=64, model_batch_size=4, eval_seqs=4))
    return {**base, **kw}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sites")
    tiny_llama(2, 16, 32, 50).save_pretrained(folder / "model")
    save_file({"inputs": IDS.contiguous()}, str(folder / "ids.safetensors"))
    return folder


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "sae" / "weights.safetensors"))


def test_each_site_trains_the_sae_that_training_it_alone_gives(assets: Path, tmp_path: Path) -> None:
    together = run(parse_run_config(sites_config(assets)), tmp_path / "sites")
    manifest = json.loads((assets / "shared" / "manifest.json").read_text())
    assert manifest["sites"] == [f"{s}:output" for s in SITES] and manifest["complete"]  # one harvest fed both
    for site in SITES:
        alone_cfg = {k: v for k, v in sites_config(assets).items() if k not in ("sites", "kind")}
        alone_cfg["data"] = {**alone_cfg["data"], "cache": None}  # streamed, from its own forwards
        alone = run(parse_run_config({"kind": "sae-train", **alone_cfg, "site": site}), tmp_path / site)
        a, b = _weights(site_folder(tmp_path / "sites", site)), _weights(tmp_path / site)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
        assert together.metrics.tables["sites"][site]["fvu"] == pytest.approx(alone.metrics.numbers["fvu"])


def test_a_site_reads_its_own_columns_of_a_shared_cache(assets: Path) -> None:
    model = tiny_llama(2, 16, 32, 50)
    args: dict[str, Any] = dict(batch_size=16, buffer_rows=32, block_seqs=4, seed=1)
    both = ActivationStore(model, IDS, SITES, cache=assets / "pair", **args)
    both.harvest()
    one = ActivationStore(model, IDS, SITES[1:], cache=assets / "pair", **args)
    pairs, single, site = iter(both), iter(one), Site.parse(SITES[1])
    for _ in range(4):
        assert torch.equal(next(pairs)[site], next(single)[site])
    with pytest.raises(AnatomistError, match="cache holds sites"):
        ActivationStore(model, IDS, ["model.layers.1.mlp"], cache=assets / "pair", **args)


def test_transcoders_and_repeated_sites_are_refused(assets: Path) -> None:
    with pytest.raises(AnatomistError, match="sae.d_out is set"):
        parse_run_config(sites_config(assets, sae=dict(arch="topk", d_in=16, d_sae=32, k=4, d_out=16)))
    with pytest.raises(AnatomistError, match="listed twice"):
        parse_run_config(sites_config(assets, sites=["model.layers.0", "model.layers.0"]))
