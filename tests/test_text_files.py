"""The user's own corpora: text, JSON lines, Parquet and datasets folders, streamed, and every bad file named."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Dataset, DatasetDict

from anatomist.core.errors import AnatomistError
from anatomist.data import corpus, load_corpus, text_files
from anatomist.runs import parse_run_config, run
from test_assets import CharTokenizer

DOCS = ["first document.", "the second one is longer", "third", "and a fourth, the last"]


def _stream(docs: list[str]) -> list[int]:
    """What CharTokenizer packs: each document's characters, then EOS (2)."""
    return [t for doc in docs for t in [ord(c) + 10 for c in doc] + [2]]


def _rows(spec: str | Path, **kw: str) -> torch.Tensor:
    return load_corpus(str(spec), **kw).tokenize(CharTokenizer(), seq_len=9, add_bos=False)


def _expected(docs: list[str]) -> list[int]:
    stream = _stream(docs)
    return stream[: len(stream) // 9 * 9]  # the last, partial row is dropped


def test_a_folder_of_text_files_is_one_document_per_file(tmp_path: Path) -> None:
    for i, doc in enumerate(DOCS):
        (tmp_path / ("sub" if i == 3 else "")).mkdir(exist_ok=True)
        (tmp_path / ("sub" if i == 3 else "") / f"{i}.{'md' if i % 2 else 'txt'}").write_text(doc)
    (tmp_path / "notes.bin").write_bytes(b"\xff")  # not a corpus file type: left out
    assert _rows(tmp_path).flatten().tolist() == _expected(DOCS)
    assert _rows(tmp_path / "*.txt").flatten().tolist() == _expected([DOCS[0], DOCS[2]])


def test_json_lines_parquet_and_datasets_folders(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d, "id": i}) + "\n\n" for i, d in enumerate(DOCS)))
    assert _rows(tmp_path / "a.jsonl", text_field="body").flatten().tolist() == _expected(DOCS)
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "a.parquet", row_group_size=2)
    assert _rows(tmp_path / "a.parquet").flatten().tolist() == _expected(DOCS)
    Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "ds"))
    assert _rows(tmp_path / "ds").flatten().tolist() == _expected(DOCS)
    DatasetDict({"train": Dataset.from_dict({"text": DOCS[:2]}), "test": Dataset.from_dict({"text": DOCS[2:]})}
                ).save_to_disk(str(tmp_path / "dd"))
    assert _rows(tmp_path / "dd", split="test").flatten().tolist() == _expected(DOCS[2:])


def test_a_long_file_streams_in_parts_with_one_end_of_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "".join(f"line {i} of a long file\n" for i in range(50))
    (tmp_path / "long.txt").write_text(text)
    monkeypatch.setattr(text_files, "MAX_PIECE_CHARS", 64)
    pieces = list(load_corpus(str(tmp_path / "long.txt")).files.pieces())  # type: ignore[union-attr]
    assert len(pieces) > 10 and all(len(p.text) <= 64 for p in pieces)
    assert [p.ends_document for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert _rows(tmp_path / "long.txt").flatten().tolist() == _expected([text])


def test_corpora_joined_by_plus_read_in_order_as_one_stream(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(DOCS[0])
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[1:]))
    joined = f"{tmp_path / 'b.jsonl'}+{tmp_path / 'a.txt'}"
    assert _rows(joined).flatten().tolist() == _expected([*DOCS[1:], DOCS[0]])  # rows run on across the join
    with pytest.raises(AnatomistError, match="empty corpus name"):
        _rows(f"{tmp_path / 'a.txt'}++wiki")
    with pytest.raises(AnatomistError, match="unknown corpus 'nowiki'"):
        _rows("wiki+nowiki")


def test_tokenising_reads_only_what_the_rows_need(tmp_path: Path) -> None:
    for i in range(70):  # texts are tokenised 64 at a time: the rows are made within the first batch
        (tmp_path / f"{i:03d}.txt").write_text("x" * 100)
    (tmp_path / "zz.txt").write_bytes(b"never read: \xff\xfe")  # a bad file after the rows are made is not reached
    rows = load_corpus(str(tmp_path)).tokenize(CharTokenizer(), seq_len=9, n_seqs=3)
    assert rows.shape == (3, 9)


@pytest.mark.parametrize(("name", "content", "spec", "message"), [
    ("bad.txt", b"fine\nstill fine\nnot \xff utf-8\n", "bad.txt", r"bad.txt: line 3 is not UTF-8"),
    ("a.jsonl", b'{"text": "ok"}\n{"body": "no text"}\n', "a.jsonl", r"a.jsonl: line 2: has no 'text' field"),
    ("a.jsonl", b'{"text": "ok"}\n{"text": \n', "a.jsonl", r"a.jsonl: line 2 is not JSON"),
    ("a.jsonl", b'["a list"]\n', "a.jsonl", r"a.jsonl: line 1: is a JSON list"),
    ("a.jsonl", b'{"text": 5}\n', "a.jsonl", r"a.jsonl: line 1: 'text' is a int, not a string"),
    ("empty.txt", b"  \n\n", "empty.txt", r"corpus '.*empty.txt' is empty: its 1 file\(s\) hold no text"),
    ("a.csv", b"text\nhello\n", "a.csv", r"a.csv: unknown corpus file type '.csv'"),
    ("a.txt", b"hello", "missing.txt", r"corpus '.*missing.txt' is neither a packaged corpus nor an existing"),
    ("a.txt", b"hello", "*.md", r"the pattern matches no file"),
])
def test_bad_files_are_named_with_their_line(tmp_path: Path, name: str, content: bytes, spec: str,
                                             message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(AnatomistError, match=message):
        _rows(tmp_path / spec)


def test_bad_tables_and_folders_are_named(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "a.parquet")
    with pytest.raises(AnatomistError, match=r"a.parquet: has no column 'text' \(columns: \['body'\]\)"):
        _rows(tmp_path / "a.parquet")
    DatasetDict({"train": Dataset.from_dict({"text": DOCS})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(AnatomistError, match=r"splits \['train'\]; split 'validation' is not one"):
        _rows(tmp_path / "dd", split="validation")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(AnatomistError, match="holds no .txt, .md"):
        _rows(tmp_path / "nothing")
    with pytest.raises(AnatomistError, match="unknown corpus 'wikipedia'"):
        load_corpus("wikipedia")


def test_a_hub_corpus_offline_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AnatomistError, match="'hf:org/stories' is on the Hugging Face hub, and this machine is off"):
        load_corpus("hf:org/stories")


@pytest.mark.parametrize("form", ["jsonl", "txt-folder", "datasets"])
def test_a_run_reads_each_kind_of_file(form: str, tmp_path: Path, tiny_lm: Path) -> None:
    docs = [f"Document {i} talks about the number {i * 7} and the city of Paris." for i in range(40)]
    if form == "jsonl":
        corpus = tmp_path / "docs.jsonl"
        corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    elif form == "txt-folder":
        corpus = tmp_path / "docs"
        corpus.mkdir()
        for i, d in enumerate(docs):
            (corpus / f"{i:03d}.txt").write_text(d)
    else:
        corpus = tmp_path / "ds"
        Dataset.from_dict({"text": docs}).save_to_disk(str(corpus))
    cfg = parse_run_config({"kind": "site-read", "model": str(tiny_lm), "site": "model.layers.0", "corpus": str(corpus),
                            "n_seqs": 4, "seq_len": 16})
    result = run(cfg, tmp_path / "out")
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert str(corpus) in json.dumps(provenance["data"]) and result.summary


def test_brown_and_gzip_files_read_as_plain_text(tmp_path: Path) -> None:
    (tmp_path / "ca01").write_text("\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.\n\tIt/pps ended/vbd ./.\n\n\n"
                                   "\tA/at new/jj paragraph/nn ./.\n")
    (tmp_path / "a.rst.gz").write_bytes(gzip.compress(b"Title\n=====\n\nBody.\n"))
    [brown] = text_files.read_brown_file(tmp_path / "ca01")
    assert brown.text == 'The jury said " no " . It ended .\n\nA new paragraph .'
    [rst] = text_files.read_gzip_text_file(tmp_path / "a.rst.gz")
    assert rst.text == "Title\n=====\n\nBody.\n"
    (tmp_path / "bad.rst.gz").write_bytes(b"not gzip")
    with pytest.raises(AnatomistError, match="bad.rst.gz: not a gzip-compressed UTF-8 text file"):
        list(text_files.read_gzip_text_file(tmp_path / "bad.rst.gz"))


def test_a_corpus_the_set_up_did_not_install_says_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "BROWN_FOLDER", tmp_path / "none")
    with pytest.raises(AnatomistError, match=r"corpus 'brown' is not installed on this machine: run `make corpora`"):
        load_corpus("brown")


@pytest.mark.parametrize("name", ["brown", "python-docs", "linux-docs"])
def test_installed_corpora_tokenise(name: str) -> None:
    try:
        text = load_corpus(name)
    except AnatomistError as exc:
        pytest.skip(str(exc))  # `make corpora` could not install it here (no npm, no apt-get as root)
    rows = text.tokenize(CharTokenizer(), seq_len=64, n_seqs=20)
    assert rows.shape == (20, 64)
    decoded = "".join(chr(t - 10) for t in rows[:, 1:].flatten().tolist() if t > 2)
    assert "/nn" not in decoded and "/at " not in decoded  # Brown's tags are stripped


def test_tokenised_once_then_trained_from_the_file_equals_training_on_the_corpus(tmp_path: Path, tiny_lm: Path) -> None:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"{i:02d}.txt").write_text(f"Note {i}: the river {i % 4} floods after {i * 3} days of rain.")
    made = run(parse_run_config({"kind": "tokenize", "model": str(tiny_lm), "corpus": str(corpus), "seq_len": 16,
                                 "n_seqs": 20}), tmp_path / "tokens")
    assert made.metrics.numbers["n_seqs"] == 20 and made.metrics.numbers["n_tokens"] == 320
    base = {"kind": "sae-train", "model": str(tiny_lm), "site": "model.layers.1", "steps": 15, "batch_size": 64,
            "seed": 0, "sae": {"arch": "topk", "d_in": 16, "d_sae": 32, "k": 4}}
    data = {"seq_len": 16, "n_seqs": 16, "eval_seqs": 4, "cache": None}
    from_text = run(parse_run_config({**base, "data": {**data, "corpus": str(corpus)}}), tmp_path / "text")
    tokens = str(tmp_path / "tokens" / "tokens.safetensors")
    from_file = run(parse_run_config({**base, "data": {**data, "inputs": tokens}}), tmp_path / "file")
    for key in ("fvu", "mse", "l0"):
        assert from_file.metrics.numbers[key] == from_text.metrics.numbers[key], key


def test_tokenize_refuses_a_model_without_a_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(AnatomistError, match="no tokenizer"):
        run(parse_run_config({"kind": "tokenize", "model": "mnist-cnn", "corpus": "wiki", "n_seqs": 2}), tmp_path)
