"""The streamed dashboard statistics equal the same numbers computed on all rows at once."""

from __future__ import annotations

import math

import torch

from anatomist.report.stats import LatentStats


def _data(n_seqs: int = 12, seq_len: int = 9, d: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(n_seqs * seq_len, d, generator=g)) * torch.logspace(-2, 2, d)  # [n, d]
    seq = torch.arange(n_seqs).repeat_interleave(seq_len)
    return acts, seq


def _stream(acts: torch.Tensor, seq: torch.Tensor, block: int, **kw: object) -> LatentStats:
    stats = LatentStats(acts.shape[1], **kw)  # type: ignore[arg-type]
    for start in range(0, len(acts), block):
        stats.update(acts[start : start + block], seq[start : start + block])
    return stats


def test_streamed_equals_all_at_once() -> None:
    acts, seq = _data()
    stats = _stream(acts, seq, block=27, top_k=5, before=3, after=2, bins=16)  # blocks are whole sequences (27 = 3*9)
    assert stats.n_rows == len(acts)
    assert torch.equal(stats.fires, (acts > 0).sum(0))
    torch.testing.assert_close(stats.total, acts.double().sum(0))
    torch.testing.assert_close(stats.max, acts.max(0).values)
    want = acts.topk(5, dim=0)
    torch.testing.assert_close(stats.top_val, want.values)
    # histogram: every nonzero entry counted once, in the bin of its log10 value
    b = ((acts[acts > 0].log10() + 4) * 2).floor().clamp(0, 15)
    assert int(stats.hist.sum()) == int((acts > 0).sum())
    assert torch.equal(stats.hist.view(7, 16).sum(0), torch.bincount(b.long(), minlength=16))


def test_context_windows_stay_inside_their_sequence() -> None:
    acts, seq = _data()
    stats = _stream(acts, seq, block=27, top_k=4, before=3, after=2)
    for i in range(acts.shape[1]):
        for j in range(4):
            row = int(stats.top_row[j, i])
            for o, a in enumerate(stats.top_ctx[j, i].tolist()):
                r = row - 3 + o
                if 0 <= r < len(acts) and seq[r] == seq[row]:
                    assert a == acts[r, i].item()
                else:
                    assert math.isnan(a)


def test_quantile_samples_come_from_their_bins() -> None:
    acts, seq = _data(n_seqs=40)
    stats = _stream(acts, seq, block=90, bins=32)
    edges = 10 ** stats.bin_edges().double()
    qs = (0.1, 0.5, 0.9)
    cells = stats.quantile_cells(qs)
    for i in range(acts.shape[1]):
        assert (cells[i] >= 0).any(), "every latent fires in this data"
        vals = acts[:, i][acts[:, i] > 0].double()
        for q, cell in zip(qs, cells[i].tolist(), strict=True):
            if cell < 0:
                continue
            assert cell // stats.bins == i
            lo, hi = float(edges[cell % stats.bins]), float(edges[cell % stats.bins + 1])
            v = float(stats.s_val[cell])
            assert lo <= v * (1 + 1e-6) and v <= hi * (1 + 1e-6)
            assert v == acts[int(stats.s_row[cell]), i].item()  # the row it names holds that value
            # the bin is where the empirical CDF crosses q
            assert float((vals < lo).double().mean()) <= q + 1e-6 <= float((vals <= hi).double().mean()) + 2e-6


def test_priority_samples_are_uniform_within_a_bin() -> None:
    # one latent, one bin, 8 rows with the same activation: each row should hold the sample 1/8 of the time
    wins = torch.zeros(8)
    for seed in range(800):
        stats = LatentStats(1, bins=1, seed=seed)
        for _ in range(8):  # one row per block: the sample must survive later blocks fairly too
            stats.update(torch.ones(1, 1), torch.zeros(1, dtype=torch.long))
        wins[int(stats.s_row[0])] += 1
    assert wins.min() > 60 and wins.max() < 140  # 100 expected each; a last-wins or first-wins rule fails
