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
    for i in range(acts.shape[1]):
        samples = stats.quantile_samples(i, (0.1, 0.5, 0.9))
        assert samples, "every latent fires in this data"
        vals = acts[:, i][acts[:, i] > 0]
        for s in samples:
            cell = int(s["cell"])
            v = float(stats.s_val[cell])
            assert float(s["lo"]) <= v * (1 + 1e-6) and v <= float(s["hi"]) * (1 + 1e-6)
            assert v == acts[int(stats.s_row[cell]), i].item()  # the row it names holds that value
            # the bin is where the empirical CDF crosses q
            below = float((vals < float(s["lo"])).float().mean())
            upto = float((vals <= float(s["hi"])).float().mean())
            assert below <= float(s["q"]) + 1e-6 and float(s["q"]) <= upto + 1e-6
