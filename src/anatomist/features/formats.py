"""Sparse dictionaries on disk: anatomist's folder, SAELens folders (read and write), sparsify and
dictionary_learning folders (read).

anatomist folder (written by `save_sae(..., format="anatomist")`):

    config.yaml           the SAEConfig (YAML; every field, so the file alone rebuilds the dictionary)
    weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out],
                          threshold [d_sae] (jumprelu, batchtopk); float tensors in the config's dtype
    metadata.json         {"anatomist_format": 1, ...}: what the caller passed, e.g. model_name, site,
                          target_site (transcoders), training provenance

SAELens folder (SAELens 6 layout, read back by `sae_lens.SAE.load_from_disk`):

    cfg.json                  {"architecture", "d_in", "d_sae", ["d_out"], ["k"], "dtype", "device",
                               "apply_b_dec_to_input", "normalize_activations": "none", "reshape_activations",
                               "metadata": {"sae_lens_version", "model_name", "hook_name", ...}}
    sae_weights.safetensors   W_enc, b_enc, W_dec, b_dec, [threshold]

    relu / relu-tied -> "standard" ("transcoder" when d_out is set); topk -> "topk" (no SAELens TopK
    transcoder exists: refused); jumprelu and batchtopk -> "jumprelu" ("jumprelu_transcoder"), BatchTopK's
    single threshold written for every latent. SAELens transcoders never centre their input, so a centring
    transcoder is saved with b_dec folded into b_enc (exact).
    Reading also accepts pre-6 layouts (model_name/hook_name/hook_point at top level, activation_fn(_str),
    activation_fn_kwargs.k, boolean normalize_activations, a unit scaling_factor) and topk files with
    rescale_acts_by_decoder_norm (folded into the weights). Anything that changes inference in a way we do
    not implement (layer_norm / constant_norm_rescale input normalisation, gated, skip transcoders, ...)
    is refused by name.

sparsify folder (one per hook point; a parent folder holding several is refused with their names):

    cfg.json          {"d_in", "k", "num_latents" | "expansion_factor", "activation": "topk", "transcode", ...}
    sae.safetensors   encoder.weight [d_sae, d_in], encoder.bias [d_sae], W_dec [d_sae, d_in], b_dec [d_in]

dictionary_learning folder (Marks et al.'s `dictionary_learning` trainers; one per trainer):

    config.json       {"trainer": {"dict_class", "activation_dim", "dict_size", ["k"], "lm_name", "layer",
                       "submodule_name", ...}, "buffer": {...}}
    ae.pt             the dictionary's state dict, read with torch.load(weights_only=True) (never unpickled)

    AutoEncoder -> relu (encoder/decoder nn.Linear, `bias` subtracted from the input and added back);
    AutoEncoderTopK -> topk; BatchTopKSAE and MatryoshkaBatchTopKSAE -> batchtopk (their scalar inference
    threshold for every latent); JumpReluAutoEncoder -> jumprelu (no input centring, as that class).
    GatedAutoEncoder and the others are refused by name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from anatomist.core import AnatomistError, load_json, load_tensors, save_json, save_tensors
from anatomist.core.config import read_yaml_mapping
from anatomist.core.hub import hub_reachable
from anatomist.features.archs import TopKConfig
from anatomist.features.base import SAEConfig, SparseDictionary, make_sae, upgrade_legacy

ANATOMIST_FORMAT_VERSION = 1
SAELENS_VERSION_WRITTEN = "6.0.0"  # the layout we write; SAELens >= 6 reads it without conversion
_CORE_KEYS = ["W_enc", "b_enc", "W_dec", "b_dec"]
_SAELENS_ARCHS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
_SAELENS_TRANSCODERS = {"transcoder": "relu", "jumprelu_transcoder": "jumprelu"}
_IDENTITY_NORMALISATIONS = ("none", "expected_average_only_in")  # no runtime transform at inference in SAELens
_DTYPES = {
    "float32": "float32",
    "torch.float32": "float32",
    "float64": "float64",
    "torch.float64": "float64",
    "bfloat16": "bfloat16",
    "torch.bfloat16": "bfloat16",
    "float16": "float32",
    "torch.float16": "float32",
}


Format = Literal["anatomist", "saelens", "sparsify", "dictionary_learning"]


def detect_format(path: str | Path) -> Format:
    """Which of the four folder formats `path` holds; an error says what was expected otherwise."""
    folder = Path(path)
    if (folder / "weights.safetensors").is_file() and (folder / "config.yaml").is_file():
        return "anatomist"
    if (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file():
        return "saelens"
    if (folder / "cfg.json").is_file() and (folder / "sae.safetensors").is_file():
        return "sparsify"
    if (folder / "config.json").is_file() and (folder / "ae.pt").is_file():
        return "dictionary_learning"
    if not folder.is_dir():
        raise AnatomistError(f"{folder}: no such folder (expected a folder holding a sparse dictionary)")
    inner = sorted(p.name for p in folder.iterdir() if p.is_dir() and _looks_like_sae(p))
    if inner:
        raise AnatomistError(f"{folder}: holds several dictionaries (one per hook point); load one of {inner}")
    raise AnatomistError(
        f"{folder}: not a sparse-dictionary folder; expected config.yaml + weights.safetensors (anatomist), "
        f"cfg.json + sae_weights.safetensors (SAELens), cfg.json + sae.safetensors (sparsify) or "
        f"config.json + ae.pt (dictionary_learning); "
        f"found {sorted(p.name for p in folder.iterdir())}"
    )


def _looks_like_sae(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    return bool({"weights.safetensors", "sae_weights.safetensors", "sae.safetensors", "ae.pt"} & names)


HUB_SCHEME, SAELENS_SCHEME = "hf://", "saelens:"


def _hub_folder(repo_id: str, subfolder: str, what: str) -> Path:
    """The local copy of `subfolder` of a hub repository (downloaded once into the Hugging Face cache)."""
    from huggingface_hub import snapshot_download  # only hub references need it

    if not hub_reachable():
        raise AnatomistError(f"{what}: the Hugging Face hub is unreachable from this machine (offline); download "
                             f"the folder elsewhere and pass its path")
    pattern = f"{subfolder.strip('/')}/*" if subfolder.strip("/") else "*"
    try:
        root = Path(snapshot_download(repo_id, allow_patterns=[pattern]))
    except Exception as exc:  # the hub client raises its own errors for unknown repositories and files
        raise AnatomistError(f"{what}: could not be downloaded ({type(exc).__name__}: {exc})") from None
    return root / subfolder.strip("/")


def resolve_reference(path: str | Path) -> Path:
    """A local folder for `path`: itself, `hf://ORG/REPO/SUBFOLDER` from the hub, or `saelens:RELEASE:SAE_ID`
    looked up in SAELens's directory of pretrained SAEs (needs sae_lens installed) and fetched from the hub."""
    text = str(path)
    if text.startswith(HUB_SCHEME):
        parts = text.removeprefix(HUB_SCHEME).split("/", 2)
        if len(parts) < 2:
            raise AnatomistError(f"{text}: a hub reference is hf://ORG/REPO[/SUBFOLDER]")
        return _hub_folder(f"{parts[0]}/{parts[1]}", parts[2] if len(parts) > 2 else "", text)
    if text.startswith(SAELENS_SCHEME):
        release, _, sae_id = text.removeprefix(SAELENS_SCHEME).partition(":")
        try:
            from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
        except ImportError:
            raise AnatomistError(f"{text}: SAELens release names need sae_lens installed (pip install sae-lens), "
                                 f"or use hf://ORG/REPO/SUBFOLDER") from None
        lookup = get_pretrained_saes_directory().get(release)
        if lookup is None or sae_id not in lookup.saes_map:
            known = sorted(lookup.saes_map)[:5] if lookup is not None else []
            raise AnatomistError(f"{text}: no SAE '{sae_id}' in SAELens release '{release}'"
                                 + (f" (e.g. {known})" if known else " (unknown release)"))
        return _hub_folder(lookup.repo_id, lookup.saes_map[sae_id], text)
    return Path(path)


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SparseDictionary:
    """Load a dictionary from an anatomist, SAELens, sparsify or dictionary_learning folder (detected), or from
    a hub reference (`resolve_reference`); `.metadata` holds its info."""
    folder = resolve_reference(path)
    if folder.is_file():
        folder = folder.parent
    fmt = detect_format(folder)
    loader = {"anatomist": _load_anatomist, "saelens": _load_saelens, "sparsify": _load_sparsify,
              "dictionary_learning": _load_dictionary_learning}[fmt]
    sae = loader(folder)
    sae.metadata = {**sae.metadata, "source_format": fmt, "source_path": str(folder)}
    return sae.to(device).eval()


def save_sae(
    sae: SparseDictionary,
    path: str | Path,
    format: Literal["anatomist", "saelens"] = "anatomist",
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write `sae` as a folder in `format`; the folder appears whole or not at all (written aside, renamed)."""
    folder = Path(path)
    if folder.exists() and any(folder.iterdir()) and not _looks_like_sae(folder):
        raise AnatomistError(f"{folder}: exists and is not a sparse-dictionary folder; refusing to replace it")
    meta = {**sae.metadata, **(metadata or {})}
    for key in ("source_format", "source_path"):
        meta.pop(key, None)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if format == "anatomist":
            _save_anatomist(sae, tmp, meta)
        elif format == "saelens":
            _save_saelens(sae, tmp, meta)
        else:
            raise AnatomistError(f"unknown format '{format}' (use 'anatomist' or 'saelens')")
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- anatomist -------------------------------------------------------------------------------------------------
def _save_anatomist(sae: SparseDictionary, folder: Path, meta: dict[str, Any]) -> None:
    sae.cfg.to_yaml(folder / "config.yaml")
    save_tensors(folder / "weights.safetensors", sae.export_weights())
    save_json(folder / "metadata.json", {"anatomist_format": ANATOMIST_FORMAT_VERSION, **meta})


def _load_anatomist(folder: Path) -> SparseDictionary:
    cfg = SAEConfig.parse(upgrade_legacy(read_yaml_mapping(folder / "config.yaml")), source=str(folder / "config.yaml"))
    meta = load_json(folder / "metadata.json") if (folder / "metadata.json").is_file() else {}
    version = meta.pop("anatomist_format", ANATOMIST_FORMAT_VERSION)
    if version > ANATOMIST_FORMAT_VERSION:
        raise AnatomistError(f"{folder / 'metadata.json'}: format version {version} is newer than this anatomist")
    return _build(cfg, load_tensors(folder / "weights.safetensors"), folder / "weights.safetensors", meta)


def _build(cfg: SAEConfig, weights: dict[str, Tensor], source: Path, meta: dict[str, Any]) -> SparseDictionary:
    for name, tensor in weights.items():  # a diverged training run saves NaNs: every number from it would be NaN
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise AnatomistError(f"{source}: tensor '{name}' holds {bad} non-finite value(s) (nan/inf) of "
                                 f"{tensor.numel()}; refusing a dictionary that cannot give finite numbers")
    sae = make_sae(cfg)
    sae.import_weights(weights, source=str(source))
    sae.metadata = meta
    return sae


def _unit_rows(w_dec: Tensor) -> bool:
    return bool(torch.allclose(w_dec.float().norm(dim=-1), torch.ones(w_dec.shape[0]), atol=1e-3))


# ---- SAELens ---------------------------------------------------------------------------------------------------
def _save_saelens(sae: SparseDictionary, folder: Path, meta: dict[str, Any]) -> None:
    cfg = sae.cfg
    w = sae.export_weights()
    if cfg.arch in ("relu", "relu-tied"):
        arch = "transcoder" if cfg.is_transcoder else "standard"
    elif cfg.arch == "topk":
        if cfg.is_transcoder:
            raise AnatomistError("SAELens has no TopK transcoder; save this one with format='anatomist'")
        arch = "topk"
    else:  # jumprelu, batchtopk: a per-latent threshold on the pre-activation
        if cfg.arch == "batchtopk" and not bool((w["threshold"] >= 0).all()):
            raise AnatomistError("this BatchTopK dictionary has no inference threshold yet (train it first)")
        arch = "jumprelu_transcoder" if cfg.is_transcoder else "jumprelu"
    centers = cfg.centers_input
    if cfg.is_transcoder and centers:  # SAELens transcoders do not centre: fold b_dec into b_enc
        w["b_enc"] = w["b_enc"] - w["b_dec"] @ w["W_enc"]
        centers = False
    out: dict[str, Any] = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": centers,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if cfg.is_transcoder:
        out["d_out"] = cfg.out_dim
    if arch == "topk" and isinstance(cfg, TopKConfig):
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    sl_meta: dict[str, Any] = {"sae_lens_version": SAELENS_VERSION_WRITTEN, "sae_lens_training_version": None}
    sl_meta.update(meta)
    if "hook_name" not in meta and "site" in meta:
        sl_meta["hook_name"] = meta["site"]
    if cfg.is_transcoder and "hook_name_out" not in meta and "target_site" in meta:
        sl_meta["hook_name_out"] = meta["target_site"]
    out["metadata"] = sl_meta
    save_json(folder / "cfg.json", out)
    save_tensors(folder / "sae_weights.safetensors", w)


def _saelens_config(raw: dict[str, Any], cfg_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bring any SAELens cfg.json (pre-6 or 6.x) to one shape: (fields, metadata)."""
    meta = dict(raw.get("metadata") or {})
    for key in (
        "model_name",
        "hook_name",
        "hook_point",
        "hook_layer",
        "hook_head_index",
        "dataset_path",
        "context_size",
        "prepend_bos",
        "neuronpedia_id",
        "sae_lens_version",
        "sae_lens_training_version",
    ):
        if key in raw and key not in meta:
            meta["hook_name" if key == "hook_point" else key] = raw[key]
    cfg = dict(raw)
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    if "architecture" not in cfg:
        cfg["architecture"] = _architecture_of(cfg, activation, cfg_path)
    if activation == "topk" and "k" not in cfg:
        cfg["k"] = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if activation not in ("relu", "topk") and cfg["architecture"] == "standard":
        raise AnatomistError(f"{cfg_path}: activation_fn '{activation}' is not supported (relu and topk are)")
    norm = cfg.get("normalize_activations", "none")
    norm = {False: "none", None: "none", True: "expected_average_only_in"}.get(norm, norm)
    if norm not in _IDENTITY_NORMALISATIONS:
        raise AnatomistError(
            f"{cfg_path}: normalize_activations '{norm}' transforms inputs at inference; not supported "
            f"(supported: {list(_IDENTITY_NORMALISATIONS)})"
        )
    meta = {k: v for k, v in meta.items() if k not in ("sae_lens_version", "sae_lens_training_version")}
    if cfg.get("reshape_activations", "none") != "none":
        meta["reshape_activations"] = cfg["reshape_activations"]  # weights act on the flattened [.., d_in]
    return cfg, meta


def _architecture_of(cfg: dict[str, Any], activation: str, cfg_path: Path) -> str:
    """The SAELens architecture of a cfg.json that does not name one: TopK when it says topk or only has a `k`."""
    if activation == "topk":
        return "topk"
    if cfg.get("k") is None:
        return "standard"
    if "activation_fn" in cfg or "activation_fn_str" in cfg:  # says relu, yet has a k: which one is wrong?
        raise AnatomistError(
            f"{cfg_path}: no 'architecture', activation_fn '{activation}' but a 'k' ({cfg['k']}): cannot tell a "
            "ReLU from a TopK dictionary; add \"architecture\": \"topk\" or \"standard\"")
    return "topk"  # a `k` means nothing to any other architecture


def _load_saelens(folder: Path) -> SparseDictionary:
    cfg_path, w_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    raw = load_json(cfg_path)
    if not isinstance(raw, dict):
        raise AnatomistError(f"{cfg_path}: expected a JSON object")
    cfg, meta = _saelens_config(raw, cfg_path)
    arch_name = cfg["architecture"]
    if arch_name in _SAELENS_ARCHS:
        arch, d_out = _SAELENS_ARCHS[arch_name], None
    elif arch_name in _SAELENS_TRANSCODERS:
        arch, d_out = _SAELENS_TRANSCODERS[arch_name], cfg.get("d_out")
    else:
        known = sorted(_SAELENS_ARCHS) + sorted(_SAELENS_TRANSCODERS)
        raise AnatomistError(f"{cfg_path}: SAELens architecture '{arch_name}' is not supported (supported: {known})")
    for key in ("d_in", "d_sae") + (("k",) if arch == "topk" else ()) + (("d_out",) if d_out is not None else ()):
        if not isinstance(cfg.get(key), int):
            raise AnatomistError(f"{cfg_path}: needs an integer '{key}' for architecture '{arch_name}'")
    required = _CORE_KEYS + (["threshold"] if arch == "jumprelu" else [])
    w = load_tensors(w_path, required=required)
    scale = w.pop("scaling_factor", None)
    if scale is not None and not torch.allclose(scale, torch.ones_like(scale)):
        raise AnatomistError(f"{w_path}: a fine-tuning 'scaling_factor' other than 1 is not supported")
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        norms = w["W_dec"].norm(dim=-1).clamp_min(1e-8)  # fold: same pre-activation ranking, unit decoder rows
        w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * norms, w["b_enc"] * norms, w["W_dec"] / norms[:, None]
    if arch == "jumprelu":
        w["threshold"] = w["threshold"].clamp_min(0)  # SAELens applies ReLU first: a negative threshold acts as 0
    dtype = _DTYPES.get(str(cfg.get("dtype", "float32")), "float32")
    sae_cfg = SAEConfig.parse(
        {
            "arch": arch,
            "d_in": cfg["d_in"],
            "d_sae": cfg["d_sae"],
            "d_out": d_out,
            **({"k": cfg.get("k")} if arch == "topk" else {}),
            "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)) and d_out is None,
            "normalize_decoder": _unit_rows(w["W_dec"]) if "W_dec" in w else True,
            "dtype": dtype,
        },
        source=str(cfg_path),
    )
    return _build(sae_cfg, w, w_path, meta)


# ---- sparsify --------------------------------------------------------------------------------------------------
def _load_sparsify(folder: Path) -> SparseDictionary:
    cfg_path, w_path = folder / "cfg.json", folder / "sae.safetensors"
    cfg = load_json(cfg_path)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("d_in"), int):
        raise AnatomistError(f"{cfg_path}: expected a sparsify config with an integer 'd_in'")
    if cfg.get("activation", "topk") != "topk":
        raise AnatomistError(f"{cfg_path}: sparsify activation '{cfg['activation']}' is not supported (topk is)")
    if cfg.get("skip_connection", False):
        raise AnatomistError(f"{cfg_path}: sparsify skip connections (W_skip) are not supported")
    d_in = cfg["d_in"]
    d_sae = cfg.get("num_latents") or d_in * cfg.get("expansion_factor", 32)
    w = load_tensors(w_path, required=["encoder.weight", "encoder.bias", "W_dec", "b_dec"])
    weights = {"W_enc": w["encoder.weight"].t(), "b_enc": w["encoder.bias"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    transcode = bool(cfg.get("transcode", False))
    dtype = {torch.float64: "float64", torch.bfloat16: "bfloat16"}.get(w["W_dec"].dtype, "float32")
    sae_cfg = SAEConfig.parse(
        {
            "arch": "topk",
            "d_in": d_in,
            "d_sae": d_sae,
            "k": cfg.get("k", 32),
            "d_out": d_in if transcode else None,  # sparsify transcoders predict a site of the same width
            "apply_b_dec_to_input": not transcode,
            "normalize_decoder": bool(cfg.get("normalize_decoder", True)),
            "dtype": dtype,
        },
        source=str(cfg_path),
    )
    return _build(sae_cfg, weights, w_path, {"site": folder.name})


# ---- dictionary_learning ---------------------------------------------------------------------------------------
_DL_ARCHS = {"AutoEncoder": "relu", "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk",
             "MatryoshkaBatchTopKSAE": "batchtopk", "JumpReluAutoEncoder": "jumprelu"}


def _dl_state(path: Path) -> dict[str, Tensor]:
    """ae.pt as tensors, read by torch's weights-only loader (a pickle that is more than tensors is refused)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError, by what is wrong
        raise AnatomistError(f"{path}: not a weights-only state dict ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise AnatomistError(f"{path}: expected a state dict of tensors")
    return state


def _dl_weights(arch: str, w: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """dictionary_learning's tensors as the canonical W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec."""
    linear = {"relu": ("encoder.weight", "encoder.bias", "decoder.weight", "bias"),
              "topk": ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec"),
              "batchtopk": ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec")}
    keys = linear.get(arch, ("W_enc", "b_enc", "W_dec", "b_dec"))
    missing = [k for k in keys if k not in w]
    if missing:
        raise AnatomistError(f"{path}: missing {missing} for a {arch} dictionary; it holds {sorted(w)}")
    if arch in linear:  # nn.Linear weights are [out, in]
        return {"W_enc": w[keys[0]].t(), "b_enc": w[keys[1]], "W_dec": w[keys[2]].t(), "b_dec": w[keys[3]]}
    return {"W_enc": w["W_enc"], "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}


def _load_dictionary_learning(folder: Path) -> SparseDictionary:
    cfg_path, w_path = folder / "config.json", folder / "ae.pt"
    trainer = load_json(cfg_path).get("trainer")
    if not isinstance(trainer, dict) or "dict_class" not in trainer:
        raise AnatomistError(f"{cfg_path}: expected a dictionary_learning config with trainer.dict_class")
    dict_class = str(trainer["dict_class"])
    if dict_class not in _DL_ARCHS:
        raise AnatomistError(f"{cfg_path}: dictionary_learning class '{dict_class}' is not supported "
                             f"(supported: {sorted(_DL_ARCHS)})")
    arch, state = _DL_ARCHS[dict_class], _dl_state(w_path)
    weights = _dl_weights(arch, state, w_path)
    d_in, d_sae = weights["W_enc"].shape
    fields: dict[str, Any] = {"arch": arch, "d_in": d_in, "d_sae": d_sae, "normalize_decoder": _unit_rows(
        weights["W_dec"]), "apply_b_dec_to_input": arch != "jumprelu"}
    if arch in ("topk", "batchtopk"):
        fields["k"] = int(state["k"]) if "k" in state else int(trainer.get("k", 0))
    if arch == "batchtopk":
        weights["threshold"] = state["threshold"].float().expand(d_sae).clone()  # one threshold for all latents
    if arch == "jumprelu":
        weights["threshold"] = state["threshold"]
    meta = {k: trainer[k] for k in ("lm_name", "layer", "submodule_name") if k in trainer}
    if "lm_name" in meta:
        meta["model_name"] = meta["lm_name"]
    return _build(SAEConfig.parse(fields, source=str(cfg_path)), weights, w_path, meta)
