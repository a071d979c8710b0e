"""Dictionary science: what a trained dictionary costs in bits (MDL), whether a smaller one is complete
(stitching), and whether its units are atomic (meta-SAEs)."""

from anatomist.dictionaries.fit import fit_rows
from anatomist.dictionaries.mdl import MDL_RULES, MDLConfig, MDLRule, description_length, select_mdl
from anatomist.dictionaries.meta import MetaConfig, MetaDecomposition, decompose, train_meta_sae
from anatomist.dictionaries.stitching import (
    Matching,
    StitchConfig,
    StitchedSAE,
    insertion_effects,
    match_latents,
    stage_dictionaries,
    stitch_path,
)

__all__ = [
    "MDL_RULES",
    "MDLConfig",
    "MDLRule",
    "Matching",
    "MetaConfig",
    "MetaDecomposition",
    "StitchConfig",
    "StitchedSAE",
    "decompose",
    "description_length",
    "fit_rows",
    "insertion_effects",
    "match_latents",
    "select_mdl",
    "stage_dictionaries",
    "stitch_path",
    "train_meta_sae",
]
