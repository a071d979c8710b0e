"""Dense bases (neurons, PCA, ICA, random) as dictionaries: exact at full width, planted directions recovered."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anatomist.core.errors import AnatomistError
from anatomist.features import BASES, fit_basis, load_sae, save_sae


def _planted(n: int = 4000, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows x = s @ A + mu with independent Laplace sources s of distinct scales and a random mixing A [d, d]."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, d, generator=g) - 0.5
    sources = -u.sign() * torch.log1p(-2 * u.abs()) * torch.linspace(3, 0.5, d)  # Laplace by inverse CDF
    mixing = torch.randn(d, d, generator=g)
    return sources @ mixing + torch.randn(d, generator=g), mixing


@pytest.mark.parametrize("kind", BASES)
def test_a_full_basis_reconstructs_exactly(kind: str) -> None:
    x, _ = _planted()
    basis = fit_basis(kind, x)  # type: ignore[arg-type]
    torch.testing.assert_close(basis.decode(basis.encode(x)), x, atol=1e-3, rtol=1e-4)


def test_neurons_are_the_coordinates_and_random_is_orthonormal() -> None:
    x, _ = _planted()
    torch.testing.assert_close(fit_basis("neurons", x).encode(x), x)
    a, b = fit_basis("random", x, seed=0).W_dec, fit_basis("random", x, seed=1).W_dec
    torch.testing.assert_close(a @ a.T, torch.eye(6), atol=1e-5, rtol=0)
    assert not torch.allclose(a, b)


def test_pca_finds_the_planted_principal_directions() -> None:
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    x = torch.randn(5000, 8, generator=g) * torch.tensor([5.0, 3.0, 1, 1, 1, 1, 1, 1]) @ q.T  # variance along q[:, :2]
    basis = fit_basis("pca", x, n=2)
    cos = (basis.W_dec @ q[:, :2]).abs()  # [2 found, 2 planted]
    assert cos.diagonal().min() > 0.99


def test_ica_unmixes_planted_independent_sources() -> None:
    x, mixing = _planted()
    basis = fit_basis("ica", x)
    truth = mixing / mixing.norm(dim=-1, keepdim=True)  # each source's direction in the site
    cos = (basis.W_dec @ truth.T).abs()  # [found, planted]
    assert cos.max(0).values.min() > 0.95  # every planted source has a found direction
    pca = fit_basis("pca", x)  # the control: orthogonal directions cannot match a non-orthogonal mixing
    assert (pca.W_dec @ truth.T).abs().max(0).values.min() < 0.95


def test_a_basis_saves_and_loads(tmp_path: Path) -> None:
    x, _ = _planted()
    basis = fit_basis("pca", x, n=3)
    save_sae(basis, tmp_path / "pca")
    back = load_sae(tmp_path / "pca")
    assert back.cfg.arch == "linear" and back.cfg.basis == "pca"  # type: ignore[attr-defined]
    torch.testing.assert_close(back.encode(x), basis.encode(x))


def test_bad_widths_are_named() -> None:
    x, _ = _planted()
    with pytest.raises(AnatomistError, match="7 pca directions from 4000 rows of width 6; need 1..6"):
        fit_basis("pca", x, n=7)
    assert fit_basis("pca", x[:4]).cfg.d_sae == 4  # fewer rows than the width: as many directions as rows
    with pytest.raises(AnatomistError, match="rows have shape"):
        fit_basis("pca", x[0])
