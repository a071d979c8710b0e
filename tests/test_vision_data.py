"""Vision data and models: image folders, ccexam's three CNNs, the toy ViT."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anatomist.core.errors import AnatomistError
from anatomist.core.packages import package_folder
from anatomist.data import load_images
from anatomist.nets.assets import load_model
from anatomist.nets.toys import toy_config, train_toy
from anatomist.nets.toys.vit_mnist import _shift, _sklearn_digits
from anatomist.nets.vision import vision_layout

pytestmark = pytest.mark.usefixtures("one_thread")


def _samples() -> Path:
    return package_folder("ccexam", "ccexam", "test") / "samples"


def _class_folder(tmp_path: Path, prefix: str) -> Path:
    """ccexam's sample digits named `{prefix}_digit_{label}.png`, one sub-folder per label."""
    root = tmp_path / prefix
    for f in sorted(_samples().glob(f"{prefix}_digit_*.png")):
        label = f.stem.rsplit("_", 1)[-1]
        (root / label).mkdir(parents=True)
        shutil.copy(f, root / label / f.name)
    return root


@pytest.mark.parametrize(("model", "prefix", "mode"), [("usps-cnn", "usps", "L"), ("svhn-cnn", "svhn", "RGB")])
def test_ccexam_cnns_read_their_sample_digits_from_an_image_folder(tmp_path: Path, model: str, prefix: str,
                                                                   mode: str) -> None:
    images = load_images(str(_class_folder(tmp_path, prefix)), mode=mode)
    loaded = load_model(model)
    assert tuple(images.images.shape[1:]) == loaded.input_shape
    predicted = loaded.model(images.images).argmax(-1)
    assert images.classes is not None
    assert predicted.tolist() == [int(images.classes[i]) for i in images.labels.tolist()]  # folders named by digit


def test_image_folder_pixels_labels_and_resizing(tmp_path: Path) -> None:
    pixels = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
    Image.fromarray(pixels).save(tmp_path / "dog" / "a.png")
    Image.fromarray(255 - pixels).save(tmp_path / "cat" / "b.png")
    Image.fromarray(pixels).save(tmp_path / "loose.png")
    got = load_images(str(tmp_path))
    assert got.classes == ["cat", "dog"] and got.labels.tolist() == [0, 1, -1]  # sorted by path
    torch.testing.assert_close(got.images[1], torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(got.images[0], 1 - got.images[1])
    assert tuple(load_images(str(tmp_path), size=4, mode="L").images.shape) == (3, 1, 4, 4)


def test_image_folder_through_a_models_image_processor(tmp_path: Path) -> None:
    from transformers import ViTImageProcessor

    Image.fromarray(np.full((9, 9, 3), 255, np.uint8)).save(tmp_path / "white.png")
    processor = ViTImageProcessor(size={"height": 14, "width": 14}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    got = load_images(str(tmp_path), processor=processor).images
    assert tuple(got.shape) == (1, 3, 14, 14)
    torch.testing.assert_close(got, torch.full_like(got, (1 - 0.5) / 0.25))  # white, normalised as asked


def test_bad_image_folders(tmp_path: Path) -> None:
    with pytest.raises(AnatomistError, match="no image files"):
        load_images(str(tmp_path))
    (tmp_path / "broken.png").write_text("not an image")
    with pytest.raises(AnatomistError, match="broken.png"):
        load_images(str(tmp_path))
    with pytest.raises(AnatomistError, match="or the path of a folder"):
        load_images(str(tmp_path / "missing"))


def test_shift_moves_a_pixel_by_the_drawn_offset() -> None:
    x = torch.zeros(64, 1, 28, 28)
    x[:, 0, 10, 12] = 1.0
    moved = _shift(x, 2, torch.Generator().manual_seed(0))
    where = moved[:, 0].flatten(1).argmax(1)
    dy, dx = where // 28 - 10, where % 28 - 12
    assert moved.sum().item() == 64 and dy.abs().max() <= 2 and dx.abs().max() <= 2
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) > 10  # offsets vary per image
    assert torch.equal(_shift(x, 0, None), x)


def test_sklearn_digits_sit_in_mnists_20_pixel_box() -> None:
    images, labels = _sklearn_digits()
    assert tuple(images.shape) == (1797, 1, 28, 28) and labels.max() == 9
    assert images[..., :4, :].abs().max() == 0 and images[..., :, 24:].abs().max() == 0
    assert images.min() >= 0 and images.max() <= 1


def test_a_tiny_vit_toy_learns_digits_and_reports_held_out_accuracy() -> None:
    """A 1-block width-32 ViT, 150 steps: well above chance (0.1) on the 1,000 held-out MNIST digits it never saw."""
    cfg = toy_config("vit-mnist").replace(d_model=32, n_layers=1, n_heads=2, d_mlp=64, steps=150, max_shift=0,
                                          lr=4e-3)
    toy = train_toy(cfg, eval_samples=256)
    assert toy.metrics["test_images"] == 1000
    assert toy.metrics["test_accuracy"] > 0.35
    layout = vision_layout(toy.model)
    assert (layout.layers, layout.n_layers, layout.grid(), layout.has_cls) == ("vit.layers", 1, (4, 4), True)


def test_sae_eval_on_images_reports_accuracy_and_token_roles(tmp_path: Path) -> None:
    """sae-eval with `images` on a saved HF ViT: a PCA basis of full width reconstructs exactly, so the spliced
    model keeps its accuracy and CE, and the zero-ablated one falls to a constant prediction."""
    from transformers import ViTConfig, ViTForImageClassification

    from anatomist.features import save_sae
    from anatomist.features.bases import fit_basis
    from anatomist.nets.sites import capture
    from anatomist.runs import load_run_config, run

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       image_size=8, patch_size=4, num_channels=1)
    config.num_labels = 10
    vit = ViTForImageClassification(config).eval()
    vit.save_pretrained(tmp_path / "vit")
    loaded = load_model(str(tmp_path / "vit"))  # the classifier with its head, not the bare ViTModel
    assert (loaded.kind, loaded.input_shape, loaded.layers_path) == ("image-classifier", (1, 8, 8), "vit.layers")
    images = load_images("digits").shuffled(seed=0).images[-40:]
    rows = capture(vit, images, ["vit.layers.0"])
    basis = fit_basis("pca", next(iter(rows.values())).reshape(-1, 16))
    save_sae(basis, tmp_path / "basis")
    cfg = load_run_config("sae-eval", [f"path={tmp_path / 'basis'}", f"model={tmp_path / 'vit'}", "site=vit.layers.0",
                                       "images=digits", "n_seqs=40", "batch_size=16"])
    numbers = run(cfg, tmp_path / "out", threads=1).metrics.numbers
    assert numbers["fvu"] == pytest.approx(0.0, abs=1e-6)
    assert numbers["accuracy_spliced"] == numbers["accuracy_clean"]
    assert numbers["ce_spliced"] == pytest.approx(numbers["ce_clean"], abs=1e-5)
    assert numbers["ce_increase_se"] == pytest.approx(0.0, abs=1e-5)
    assert numbers["by_role.cls.n_rows"] == 40 and numbers["by_role.patch.n_rows"] == 40 * 4


def test_classifier_spliced_metrics_accuracy_and_the_standard_error_of_the_ce_change() -> None:
    """A 'dictionary' that halves the site: accuracy and the paired standard error of CE(spliced) − CE(clean)
    equal their textbook formulas computed here on the logits directly."""
    from torch import nn

    from anatomist.evaluate import evaluate_dictionary

    class Halve:
        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * x

        def decode(self, a: torch.Tensor) -> torch.Tensor:
            return a

    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.Linear(4, 3)).eval()
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    got = evaluate_dictionary(Halve(), model, x, "0", labels=y, batch_size=7)
    with torch.no_grad():
        clean, spliced = model(x), model[1](0.5 * x)
    diff = nn.functional.cross_entropy(spliced, y, reduction="none") - nn.functional.cross_entropy(clean, y,
                                                                                                reduction="none")
    assert got["accuracy_clean"] == pytest.approx(float((clean.argmax(-1) == y).float().mean()))
    assert got["accuracy_spliced"] == pytest.approx(float((spliced.argmax(-1) == y).float().mean()))
    assert got["ce_increase"] == pytest.approx(float(diff.mean()), abs=1e-6)
    assert got["ce_increase_se"] == pytest.approx(float(diff.std() / 50**0.5), rel=1e-4)
