"""The user's own text on disk, read as a stream of documents (never the whole corpus in memory).

`read_text_source(spec)` turns what a config's `corpus` names into a `TextFiles`: a list of files and how to read
each. Each reader yields `Piece`s: a document, or a part of one too long to hold at once (a text file over
`MAX_PIECE_CHARS` is cut at line ends; the tokenizer then sees the parts one by one and the end-of-text token
follows only the last part). What counts as a document:

- `.txt` / `.md` / `.rst` file: the whole file (a folder or a glob of them: one document per file);
- `.jsonl` file (or a folder of them): one document per line, the string under `text_field`;
- `.parquet` file: one document per row of the `text_field` column, read a row batch at a time (pyarrow);
- a folder written by Hugging Face `datasets`' `save_to_disk` (`state.json`, or `dataset_dict.json` with splits):
  its Arrow files, streamed a record batch at a time (pyarrow), column `text_field`, split `split`;
- `hf:ORG/NAME`: a dataset on the Hugging Face hub, streamed by `datasets` (needs a network; refused at once when
  HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set).

Every error names the file, and the line where there is one: a missing path, a non-UTF-8 line, a JSON line that is
not an object or lacks the field, a missing column, and a corpus that holds no text at all.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anatomist.core.errors import AnatomistError
from anatomist.core.hub import OFFLINE_VARIABLES, offline_by_setting
from anatomist.core.text import Piece

MAX_PIECE_CHARS = 1 << 22  # 4 Mi characters: a longer text file is tokenised in parts cut at line ends
TEXT_SUFFIXES = (".txt", ".md", ".rst")
FILE_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")


Reader = Callable[[Path], Iterator[Piece]]


@dataclass(frozen=True)
class TextFiles:
    """Files and the reader of each, in a fixed order; `pieces()` streams them."""

    name: str
    files: tuple[tuple[Path, Reader], ...]

    def pieces(self) -> Iterator[Piece]:
        """Every piece of every file in order; an error when none holds any text."""
        found = False
        for path, reader in self.files:
            for piece in reader(path):
                found = found or bool(piece.text.strip())
                yield piece
        if not found:
            raise AnatomistError(f"corpus '{self.name}' is empty: its {len(self.files)} file(s) hold no text")


# --- readers --------------------------------------------------------------------------------------------------


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, line with its newline) of a UTF-8 file, read a line at a time."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise AnatomistError(f"{path}: line {number} is not UTF-8 (byte {exc.start} of the line: "
                                     f"{exc.reason}); convert the file to UTF-8") from None


def read_text_file(path: Path) -> Iterator[Piece]:
    """A text file as one document, in parts of at most about MAX_PIECE_CHARS cut at line ends."""
    part: list[str] = []
    size = 0
    for _, line in _utf8_lines(path):
        if size + len(line) > MAX_PIECE_CHARS and part:
            yield Piece("".join(part), ends_document=False)
            part, size = [], 0
        part.append(line)
        size += len(line)
    yield Piece("".join(part))


def read_gzip_text_file(path: Path) -> Iterator[Piece]:
    """A gzip-compressed UTF-8 text file as one document (the Linux documentation ships its .rst files so)."""
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise AnatomistError(f"{path}: not a gzip-compressed UTF-8 text file ({exc})") from None
    yield Piece(text)


_BROWN_TOKEN = re.compile(r"(\S+)/\S+")


def read_brown_file(path: Path) -> Iterator[Piece]:
    """A Brown corpus file (`word/TAG` tokens, a sentence per line) as plain text: tags stripped, sentences joined
    into paragraphs at the blank lines, the corpus's `` and '' written as quotation marks."""
    paragraphs, sentences = [], []
    for _, line in _utf8_lines(path):
        words = _BROWN_TOKEN.findall(line)
        if words:
            sentences.append(" ".join(words).replace("``", '"').replace("''", '"'))
        elif sentences:
            paragraphs.append(" ".join(sentences))
            sentences = []
    if sentences:
        paragraphs.append(" ".join(sentences))
    yield Piece("\n\n".join(paragraphs))


def _field(record: Any, field: str, where: str) -> str:
    """The string under `field` of one JSON record or table row; `where` names it in errors."""
    if not isinstance(record, dict):
        raise AnatomistError(f"{where}: is a JSON {type(record).__name__}, not an object with a '{field}' field")
    if field not in record:
        raise AnatomistError(f"{where}: has no '{field}' field (its keys: {sorted(record)[:10]}); "
                             f"set text_field to the key that holds the text")
    value = record[field]
    if not isinstance(value, str):
        raise AnatomistError(f"{where}: '{field}' is a {type(value).__name__}, not a string")
    return value


def jsonl_reader(field: str) -> Reader:
    """A JSON-lines file, one document per non-blank line: the string under `field`."""
    def read(path: Path) -> Iterator[Piece]:
        for number, line in _utf8_lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AnatomistError(f"{path}: line {number} is not JSON ({exc.msg} at column {exc.colno})") from None
            yield Piece(_field(record, field, f"{path}: line {number}"))
    return read


def _pyarrow() -> Any:
    """pyarrow, imported only for Parquet and Arrow corpora (a heavy import the text formats do not need)."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise AnatomistError("reading Parquet or datasets folders needs pyarrow: pip install pyarrow") from None
    return pyarrow


def _column_texts(batches: Iterator[Any], field: str, where: str) -> Iterator[Piece]:
    """The strings of column `field` of Arrow record batches (nulls skipped)."""
    for batch in batches:
        if field not in batch.schema.names:
            raise AnatomistError(f"{where}: has no column '{field}' (columns: {batch.schema.names}); "
                                 f"set text_field")
        for value in batch.column(field).to_pylist():
            if value is not None and not isinstance(value, str):
                raise AnatomistError(f"{where}: column '{field}' holds {type(value).__name__} values, not strings")
            if value is not None:
                yield Piece(value)


def parquet_reader(field: str) -> Reader:
    """A Parquet file, one document per row of column `field`, a row batch at a time."""
    def read(path: Path) -> Iterator[Piece]:
        pa = _pyarrow()
        try:
            table = pa.parquet.ParquetFile(path)
        except pa.ArrowInvalid as exc:
            raise AnatomistError(f"{path}: not a readable Parquet file ({exc})") from None
        if field not in table.schema_arrow.names:
            raise AnatomistError(f"{path}: has no column '{field}' (columns: {table.schema_arrow.names}); "
                                 f"set text_field")
        yield from _column_texts(table.iter_batches(columns=[field], batch_size=1024), field, str(path))
    return read


def arrow_reader(field: str) -> Reader:
    """One Arrow IPC stream file of a `save_to_disk` folder, a record batch at a time."""
    def read(path: Path) -> Iterator[Piece]:
        pa = _pyarrow()
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid as exc:
                raise AnatomistError(f"{path}: not an Arrow stream file of a datasets folder ({exc})") from None
            yield from _column_texts(iter(reader), field, str(path))
    return read


# --- what a spec names ----------------------------------------------------------------------------------------


def _reader_for(path: Path, field: str) -> Reader:
    if path.suffix in TEXT_SUFFIXES:
        return read_text_file
    if path.suffix == ".jsonl":
        return jsonl_reader(field)
    if path.suffix == ".parquet":
        return parquet_reader(field)
    raise AnatomistError(f"{path}: unknown corpus file type '{path.suffix}'; known: {', '.join(FILE_SUFFIXES)} "
                         f"(or a datasets save_to_disk folder)")


def _datasets_files(folder: Path, split: str) -> list[Path]:
    """The Arrow files of a `save_to_disk` folder (a Dataset, or split `split` of a DatasetDict)."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        if split not in splits:
            raise AnatomistError(f"{folder}: a datasets folder with splits {splits}; split '{split}' is not one")
        folder = folder / split
    state = folder / "state.json"
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnatomistError(f"{state}: not the state file of a datasets save_to_disk folder ({exc})") from None
    return [folder / name for name in names]


def _is_datasets_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _files_of(spec: str, split: str) -> tuple[list[Path], bool]:
    """The files `spec` names, and whether they are Arrow files of a datasets folder."""
    if any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise AnatomistError(f"corpus '{spec}': the pattern matches no file")
        return files, False
    path = Path(spec).expanduser()
    if _is_datasets_folder(path):
        return _datasets_files(path, split), True
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES)
        if not files:
            raise AnatomistError(f"corpus folder '{path}' holds no {', '.join(FILE_SUFFIXES)} files")
        return files, False
    if path.is_file():
        return [path], False
    raise AnatomistError(f"corpus '{spec}' is neither a packaged corpus nor an existing file, folder or pattern")


HUB_PREFIX = "hf:"


def hub_reader(field: str, split: str) -> Reader:
    """A hub dataset (the 'path' is its name), streamed row by row by `datasets`."""
    def read(name: Path) -> Iterator[Piece]:
        try:
            from datasets import load_dataset  # heavy and optional: only hub corpora need it
        except ImportError:
            raise AnatomistError("hub corpora need the datasets package: pip install datasets") from None
        try:
            rows = load_dataset(str(name), split=split, streaming=True)
            for number, row in enumerate(rows, start=1):
                yield Piece(_field(row, field, f"hub dataset '{name}': row {number}"))
        except (OSError, ValueError) as exc:  # connection errors are OSErrors; unknown names and splits ValueErrors
            raise AnatomistError(f"hub dataset '{name}' (split '{split}') could not be read: {exc}") from None
    return read


def _hub_source(name: str, text_field: str, split: str) -> TextFiles:
    if offline_by_setting():
        raise AnatomistError(f"corpus '{HUB_PREFIX}{name}' is on the Hugging Face hub, and this machine is offline "
                             f"({' / '.join(OFFLINE_VARIABLES)}); save it with save_to_disk and pass the folder")
    return TextFiles(f"{HUB_PREFIX}{name}", ((Path(name), hub_reader(text_field, split)),))


def read_text_source(spec: str, text_field: str = "text", split: str = "train") -> TextFiles:
    """The files of a corpus path, folder or glob, each with its reader (checked now, read when streamed)."""
    if spec.startswith(HUB_PREFIX):
        return _hub_source(spec.removeprefix(HUB_PREFIX), text_field, split)
    files, arrow = _files_of(spec, split)
    readers = [(f, arrow_reader(text_field) if arrow else _reader_for(f, text_field)) for f in files]
    return TextFiles(spec, tuple(readers))
