"""The SPD step of `anatomist demo`: a short SPD run on TMS 5-2, scored against the ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anatomist.mechanisms.spd import SPDConfig
from anatomist.mechanisms.spd_toys import SPDExperiment, run_spd_experiment

# A short schedule with a larger learning rate than the paper's 40k steps at 1e-3: about ten CPU
# seconds, enough to single out every feature (the paper-length run is experiments/spd_tms_5_2.yaml).
DEMO = SPDExperiment(
    toy="tms-5-2",
    spd=SPDConfig(steps=600, batch_size=256, lr=2e-2, importance_minimality_coeff=1e-2, log_every=100),
)


def spd_step(run_dir: Path) -> dict[str, Any]:
    """Decompose TMS 5-2 with SPD; MMCS/ML2R at the start and the end, CI L0, plots in run_dir/spd."""
    m = run_spd_experiment(DEMO, Path(run_dir) / "spd")
    keys = ["mmcs", "init_mmcs", "min_cosine", "ml2r", "mmcs_rows", "ci_l0", "final_stochastic_recon", "seconds"]
    out: dict[str, Any] = {k: round(m[k], 4) for k in keys}
    out["alive"] = {name: row["alive"] for name, row in m["layers"].items()}
    out["plots"] = [f"spd/{p}" for p in m["plots"]]
    return out
