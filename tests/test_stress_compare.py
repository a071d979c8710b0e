"""The comparison table (`anatomist.stress.compare`): known answers on the pentagon TMS 5-2, the robustness column
read from a stress run, and the page with one plot per column."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anatomist.core.errors import AnatomistError
from anatomist.core.metrics import Metrics, write_metrics
from anatomist.nets.toys import TrainedToy
from anatomist.runs.stress import write_page, write_plots
from anatomist.stress.compare import add_robustness, columns, markdown, stress_robustness, toy_data, toy_row
from conftest import pentagon_tms

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pentagon() -> TrainedToy:
    model, cfg = pentagon_tms()
    return TrainedToy(model.eval(), cfg, final_loss=0.0)


def test_a_complete_basis_reconstructs_exactly_and_changes_no_output(pentagon: TrainedToy) -> None:
    data = toy_data(pentagon, 4096, 0)
    row = toy_row("pca", data, 10, 1, 1, 0)
    assert row["fvu"] < 1e-6 and row["output_change"] < 1e-6 and abs(row["loss_increase"]) < 1e-7
    assert row["l0"] == pytest.approx(2.0) and row["dense"] == 1.0  # a basis: every direction on every input


def test_an_sae_finds_the_pentagon(pentagon: TrainedToy) -> None:
    data = toy_data(pentagon, 8192, 0)
    row = toy_row("sae_topk", data, 10, 1, 400, 0)
    assert row["mmcs"] > 0.95  # the five true directions, 72° apart
    assert row["l0"] <= 1.0 and 0 < row["output_change"] < 0.2 and row["bits_per_input"] > 0
    # the axes of the hidden plane are a worse reading of five directions than the SAE's latents
    assert toy_row("neurons", data, 10, 1, 1, 0)["mmcs"] < row["mmcs"]


def test_stress_robustness_is_the_share_of_judged_cells_found(tmp_path: Path) -> None:
    verdicts = {"sae_topk": {"a": "found", "b": "missed", "c": "n/a"}, "resid_axes": {"a": "found", "b": "found"}}
    write_metrics(tmp_path, "stress", Metrics.from_nested({"verdicts": verdicts}))
    robustness = stress_robustness(tmp_path)
    assert robustness == {"sae_topk": 0.5, "resid_axes": 1.0}
    rows = {"sae_topk": {"fvu": 0.1}, "neurons": {"fvu": 0.0}, "pca": {"fvu": 0.0}}
    add_robustness(rows, robustness)
    assert rows["sae_topk"]["stress_robustness"] == 0.5 and rows["neurons"]["stress_robustness"] == 1.0
    assert "stress_robustness" not in rows["pca"]
    with pytest.raises(AnatomistError, match="no metrics.json"):
        stress_robustness(tmp_path / "missing")


def test_page_has_the_table_and_a_plot_per_column(tmp_path: Path) -> None:
    rows = {"sae_topk": {"fvu": 0.1, "l0": 3.0, "mmcs": None}, "pca": {"fvu": 0.0, "l0": 10.0}}
    assert columns(rows) == ["fvu", "l0"]
    plots = write_plots(rows, tmp_path)
    assert plots == ["compare_fvu.png", "compare_l0.png"] and all((tmp_path / p).stat().st_size > 0 for p in plots)
    html = write_page(rows, "test", tmp_path, plots).read_text()
    assert "<table" in html and "compare_l0.png" in html and "sae_topk" in html
    assert markdown(rows).splitlines()[0] == "| decomposition | fvu | l0 |"


def test_unknown_toy_family_is_refused(pentagon: TrainedToy) -> None:
    class Other:
        config = type("C", (), {"kind": "moe_lm", "name": "moe-lm"})()

    with pytest.raises(AnatomistError, match="compare on toys knows"):
        toy_data(Other(), 10, 0)
    assert torch.isfinite(pentagon.model.W).all()
