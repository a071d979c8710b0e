"""MDL: a hand-built code whose description length is worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from anatomist.core import AnatomistError
from anatomist.dictionaries.mdl import MDLConfig, binary_entropy, description_length, select_mdl


class Identity:
    """A 'dictionary' whose code is its input and whose decoder is the identity: the code is known exactly."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts


# 8 inputs, 3 latents.
#   latent 0 fires on 4/8 with values {1, 2} half each: H(1/2) + 1/2 * H({1/2, 1/2}) = 1 + 0.5     = 1.5 bits
#   latent 1 fires always with value 4:                  H(1)   + 1   * 0                = 0 bits
#   latent 2 fires on 2/8 with values {1, 3}:            H(1/4) + 1/4 * 1                = 0.811278 + 0.25
CODE = torch.tensor([
    [1, 4, 0], [2, 4, 0], [1, 4, 0], [2, 4, 0],
    [0, 4, 0], [0, 4, 0], [0, 4, 1], [0, 4, 3],
], dtype=torch.float32)
H_QUARTER = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))  # 0.811278


def test_binary_entropy_known_values() -> None:
    h = binary_entropy(torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert h.tolist() == pytest.approx([0.0, H_QUARTER, 1.0, 0.0])


def test_hand_built_code_at_exact_precision() -> None:
    # max |a| = 4: a grid of 4 / 2^2 = 1 holds every value exactly; 1 bit (grid 2) does not, so B = 2
    r = description_length(Identity(), CODE, MDLConfig(fvu_tolerance=1e-9))
    assert r["precision_bits"] == 2 and r["step"] == 1.0
    assert r["fvu_quantised"] == pytest.approx(0.0) and r["meets_tolerance"]
    assert r["firing_bits_per_input"] == pytest.approx(1.0 + 0.0 + H_QUARTER)
    assert r["value_bits_per_input"] == pytest.approx(0.5 + 0.0 + 0.25)
    assert r["code_bits_per_input"] == pytest.approx(1.5 + H_QUARTER + 0.25)
    assert r["l0"] == pytest.approx(14 / 8)
    assert r["bound_bits_per_input"] == pytest.approx(14 / 8 * (2 + math.log2(3)))
    assert r["dictionary_bits"] == 3 * 3 * 16  # F * d_out * 16 bits
    assert r["bits_per_input"] == pytest.approx(r["code_bits_per_input"] + 144 / 8)


def test_coarser_tolerance_takes_a_coarser_grid_and_fewer_bits() -> None:
    # grid 2: 1 and 2 both become 2 (latent 0's values carry no information), 1 -> 2 and 3 -> 4 stay distinct
    r = description_length(Identity(), CODE, MDLConfig(fvu_tolerance=0.5, amortise_over=1e12))
    assert r["precision_bits"] == 1 and r["step"] == 2.0
    assert r["fvu_quantised"] <= 0.5
    assert r["code_bits_per_input"] == pytest.approx(1.0 + H_QUARTER + 0.25)
    assert r["bits_per_input"] == pytest.approx(r["code_bits_per_input"], abs=1e-6)


def test_select_mdl_skips_codes_over_tolerance() -> None:
    results = [
        {"code_bits_per_input": 4.0, "bits_per_input": 5.0, "meets_tolerance": False, "fvu": 0.3},
        {"code_bits_per_input": 8.0, "bits_per_input": 9.0, "meets_tolerance": True, "fvu": 0.05},
        {"code_bits_per_input": 6.0, "bits_per_input": 7.0, "meets_tolerance": True, "fvu": 0.08},
    ]
    assert select_mdl(results) == 2
    with pytest.raises(AnatomistError, match="tolerance"):
        select_mdl(results[:1])


def test_select_mdl_ranks_by_code_bits_unless_told_to_add_the_dictionary() -> None:
    """The paper's choice: fewest code bits, the dictionary amortised; a wide dictionary whose own bits, spread
    over the few inputs scored, outweigh its cheaper code is the other rule's choice."""
    results = [
        {"code_bits_per_input": 30.0, "bits_per_input": 31.0, "meets_tolerance": True, "fvu": 0.05},  # narrow
        {"code_bits_per_input": 20.0, "bits_per_input": 60.0, "meets_tolerance": True, "fvu": 0.04},  # wide
    ]
    assert select_mdl(results) == 1
    assert select_mdl(results, "code") == 1 and select_mdl(results, "code+dictionary") == 0
