"""ActivationStore: right rows, one forward feeds all sites, shuffles across blocks, resumes exactly, caches safely."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from anatomist import AnatomistError, Site, capture
from anatomist.data.store import MANIFEST, ActivationStore, shard_name
from conftest import tiny_llama

SITES = ["model.layers.0", "model.layers.1.mlp:input"]


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    return tiny_llama(3, 16, 32, 50)


IDS = torch.randint(1, 50, (20, 6), generator=torch.Generator().manual_seed(1))


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    module.register_forward_pre_hook(hook)
    return calls


def _store(model: nn.Module | None, **kw: object) -> ActivationStore:
    args: dict = dict(batch_size=16, buffer_rows=40, block_seqs=4, model_batch_size=4, seed=3)
    args.update(kw)
    return ActivationStore(model, IDS, SITES, **args)


def _all_rows(store: ActivationStore) -> dict[Site, torch.Tensor]:
    parts = list(store.rows_in_order())
    return {s: torch.cat([p[s] for p in parts]) for s in store.sites}


def test_rows_match_capture_and_exclude_bos_and_padding(llama: LlamaForCausalLM) -> None:
    mask = torch.ones_like(IDS)
    mask[3, 4:] = 0  # two padding positions in sequence 3
    store = _store(llama, attention_mask=mask, exclude_bos=True)
    rows = _all_rows(store)
    keep = mask.bool().clone()
    keep[:, 0] = False
    for s in store.sites:
        want = capture(llama, {"input_ids": IDS, "attention_mask": mask}, [s])[s][keep]
        torch.testing.assert_close(rows[s], want, rtol=1e-5, atol=1e-5)
    assert rows[store.sites[0]].shape == (20 * 5 - 2, 16)
    assert store.widths() == {Site.parse(SITES[0]): 16, Site.parse(SITES[1]): 16}


def test_one_forward_per_batch_stops_after_last_site(llama: LlamaForCausalLM) -> None:
    store = _store(llama)
    forwards, last_layer = _count_calls(llama), _count_calls(llama.model.layers[2])
    list(store.rows_in_order())
    assert forwards[0] == 5  # 20 sequences / model_batch_size 4, both sites in each forward
    assert last_layer[0] == 0  # the forward stopped after layer 1's MLP input


def test_epoch_is_a_shuffled_partition_mixing_blocks(llama: LlamaForCausalLM) -> None:
    store = _store(llama, exclude_bos=True)  # (first positions repeat: they only see their own token)
    rows = _all_rows(store)[store.sites[0]]  # 100 rows, 20 per block
    block_of = {tuple(r.tolist()): i // 20 for i, r in enumerate(rows)}
    assert len(block_of) == 100
    it = iter(store)
    seen: list[tuple[float, ...]] = []
    mixed = False
    for batch in it:
        if store.state_dict()["epoch"] > 0:
            break
        assert batch[store.sites[0]].shape == (16, 16)
        keys = [tuple(r.tolist()) for r in batch[store.sites[0]]]
        mixed |= len({block_of[k] for k in keys}) > 1
        seen += keys
    # windows of 40 rows (2 blocks) give 2 batches each, the last window (1 block) one: no row twice
    assert len(seen) == len(set(seen)) == 5 * 16
    assert set(seen) <= set(block_of)
    assert mixed
    # rows stay aligned across sites: the pair (layer-0 output, layer-1 MLP input) is a real pair
    pairs = {tuple(a.tolist()): b for a, b in zip(rows, _all_rows(store)[store.sites[1]], strict=True)}
    batch = next(iter(_store(llama, exclude_bos=True)))
    for a, b in zip(batch[store.sites[0]], batch[store.sites[1]], strict=True):
        torch.testing.assert_close(pairs[tuple(a.tolist())], b)


def test_resume_from_state_gives_the_same_batches(llama: LlamaForCausalLM) -> None:
    full = iter(_store(llama))
    ref = [next(full) for _ in range(12)]  # crosses an epoch boundary
    store = _store(llama)
    it = iter(store)
    for _ in range(5):
        next(it)
    state = store.state_dict()
    again = _store(llama)
    again.load_state_dict(state)
    it2 = iter(again)
    for want in ref[5:]:
        got = next(it2)
        for s in again.sites:
            assert torch.equal(got[s], want[s])


def test_cache_reads_from_disk_without_the_model(llama: LlamaForCausalLM, tmp_path: Path) -> None:
    want = next(iter(_store(llama)))  # streaming and caching give the very same batches
    store = _store(llama, cache=tmp_path / "acts")
    store.harvest()
    manifest = (tmp_path / "acts" / MANIFEST).read_text()
    assert '"complete": true' in manifest and "model.layers.1.mlp:input" in manifest
    forwards = _count_calls(llama)
    cached = ActivationStore.from_cache(tmp_path / "acts", batch_size=16, buffer_rows=40, seed=3)
    again = _store(llama, cache=tmp_path / "acts")
    for it in (iter(cached), iter(again)):
        got = next(it)
        for s in store.sites:
            assert torch.equal(got[s], want[s])
    assert forwards[0] == 0


def test_a_float16_cache_holds_half_precision_rows_and_yields_float32(llama: LlamaForCausalLM, tmp_path: Path) -> None:
    want = next(iter(_store(llama)))
    half = _store(llama, cache=tmp_path / "acts", dtype=torch.float16)
    half.harvest()
    assert '"dtype": "float16"' in (tmp_path / "acts" / MANIFEST).read_text()
    assert ActivationStore.from_cache(tmp_path / "acts").block(0)[Site.parse(SITES[0])].dtype == torch.float16
    got = next(iter(half))
    for s in half.sites:  # the same rows in the same order, each rounded to float16 once
        assert got[s].dtype == torch.float32 and torch.equal(got[s], want[s].half().float())
    assert not torch.equal(got[half.sites[0]], want[half.sites[0]])


def test_interrupted_harvest_resumes_at_the_missing_shard(llama: LlamaForCausalLM, tmp_path: Path) -> None:
    calls = [0]

    def die_on_fourth(*_: object) -> None:
        calls[0] += 1
        if calls[0] == 4:  # block 1 is forwards 3-4: dies inside it
            raise KeyboardInterrupt

    handle = llama.register_forward_pre_hook(die_on_fourth)
    store = _store(llama, cache=tmp_path / "acts", model_batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        store.harvest()
    handle.remove()
    assert sorted(p.name for p in (tmp_path / "acts").iterdir()) == [MANIFEST, shard_name(0)]
    forwards = _count_calls(llama)
    resumed = _store(llama, cache=tmp_path / "acts", model_batch_size=2)
    resumed.harvest()
    assert forwards[0] == 8  # blocks 1-4 only, two forwards each
    fresh = _all_rows(_store(llama))
    for s, rows in _all_rows(resumed).items():
        torch.testing.assert_close(rows, fresh[s])


def test_corrupted_or_reshaped_shard_names_the_file(llama: LlamaForCausalLM, tmp_path: Path) -> None:
    store = _store(llama, cache=tmp_path / "acts")
    store.harvest()
    shard = tmp_path / "acts" / shard_name(2)
    shard.write_bytes(shard.read_bytes()[:-40])
    with pytest.raises(AnatomistError, match=shard_name(2)):
        list(_store(None, cache=tmp_path / "acts").rows_in_order())
    shard.write_bytes(b"garbage")
    with pytest.raises(AnatomistError, match=shard_name(2)):
        list(_store(llama, cache=tmp_path / "acts").rows_in_order())


def test_cache_of_other_data_or_sites_is_refused(llama: LlamaForCausalLM, tmp_path: Path) -> None:
    _store(llama, cache=tmp_path / "acts").harvest()
    with pytest.raises(AnatomistError, match="other data"):
        ActivationStore(llama, IDS + 1, SITES, block_seqs=4, cache=tmp_path / "acts")
    with pytest.raises(AnatomistError, match="cache holds sites"):  # a site it never harvested
        ActivationStore(llama, IDS, ["model.layers.0.mlp"], block_seqs=4, cache=tmp_path / "acts")
    some = ActivationStore(llama, IDS, SITES[:1], block_seqs=4, cache=tmp_path / "acts")  # some of its sites: read
    assert some.harvested and list(some.block(0)) == [Site.parse(SITES[0])]


def test_too_few_rows_for_a_batch_is_an_error(llama: LlamaForCausalLM) -> None:
    with pytest.raises(AnatomistError, match="fewer rows than one batch"):
        next(iter(_store(llama, batch_size=1000)))


def test_images_give_one_row_per_example_or_spatial_position() -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    images = torch.rand(6, 1, 6, 6)
    store = ActivationStore(cnn, images, ["1", "3"], batch_size=4, block_seqs=3, model_batch_size=3)
    rows = _all_rows(store)
    assert rows[Site("1")].shape == (6 * 16, 3)  # conv map: one row per spatial position, channels as features
    assert rows[Site("3")].shape == (6, 5)


def test_model_fingerprint_sees_every_weight(llama: LlamaForCausalLM) -> None:
    """An edit past the first values of a weight (zeroing columns of a down projection) changes the fingerprint,
    and with it the automatic cache folder, so activations of the unedited model are never read back."""
    from anatomist.data.store import model_fingerprint

    edited = tiny_llama(3, 16, 32, 50)
    before, key = model_fingerprint(edited), _store(edited).cache_key()
    assert before == model_fingerprint(llama)
    with torch.no_grad():
        edited.model.layers[1].mlp.down_proj.weight[2:, 20:30] = 0  # [16, 32]: from flat index 84, past the first 64
    assert model_fingerprint(edited) != before
    assert _store(edited).cache_key() != key
    assert _store(edited).fingerprint() == _store(llama).fingerprint()  # the data's own identity is unchanged


def test_a_cache_of_edited_weights_is_refused(llama: LlamaForCausalLM, tmp_path: Path) -> None:
    _store(llama, cache=tmp_path / "acts").harvest()
    edited = tiny_llama(3, 16, 32, 50)
    with torch.no_grad():
        edited.model.layers[0].self_attn.o_proj.weight[5:, :] += 1.0
    with pytest.raises(AnatomistError, match="another model's weights"):
        _store(edited, cache=tmp_path / "acts")
