"""Fixtures shared by the test files."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from anatomist.nets.assets import LoadedModel, load_model

# captured at import, before any test points ANATOMIST_CACHE elsewhere
_USER_CACHE = os.environ.get("ANATOMIST_CACHE")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker gets its share of the cores: n workers with torch's default thread count
    each would oversubscribe the CPU, and OpenMP barriers then make every step several times slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ANATOMIST_CACHE for one test, so tests never write into the user's cache."""
    root = tmp_path / "anatomist-cache"
    monkeypatch.setenv("ANATOMIST_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """SmolLM2-135M-Instruct on CPU, loaded once per test session.

    Deliberately from the user's real cache ($ANATOMIST_CACHE or ~/.cache/anatomist), not a temp
    one: de-quantising the GGUF costs 10-30 s, and that cache exists so it is paid once per
    machine. The first run on a fresh machine builds it (~540 MB); later runs load it in seconds.
    """
    with pytest.MonkeyPatch.context() as mp:
        if _USER_CACHE is None:
            mp.delenv("ANATOMIST_CACHE", raising=False)
        else:
            mp.setenv("ANATOMIST_CACHE", _USER_CACHE)
        return load_model("smollm2")


def tiny_llama(layers: int, hidden: int, intermediate: int, vocab: int) -> LlamaForCausalLM:
    """A tiny random Llama (seed 0, 4 heads, 2 KV heads, token 0 = BOS = EOS = PAD) in eval mode."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        num_hidden_layers=layers, hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny nets: a second intra-op thread buys nothing, and on a busy shared machine OpenMP barriers
    make multi-threaded steps several times slower. Modules opt in with `usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pentagon_tms() -> tuple[nn.Module, Any]:
    """TMS 5-2 with the weights training converges to: five unit columns 72° apart, bias -0.1."""
    from anatomist.nets.toys import toy_config

    cfg = toy_config("tms-5-2")
    model = cfg.build()
    angles = torch.arange(5) * 2 * math.pi / 5
    with torch.no_grad():
        model.linear1.weight.copy_(torch.stack([angles.cos(), angles.sin()]))
        model.b_final.fill_(-0.1)
    return model, cfg


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory, smollm2: LoadedModel) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, saved as a local Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny-hf")
    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(smollm2.tokenizer))
    LlamaForCausalLM(cfg).save_pretrained(folder)
    smollm2.tokenizer.save_pretrained(folder)
    return folder
