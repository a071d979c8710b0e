"""Run kind `tokenize`: a corpus packed into rows of token ids, written once as a `data.inputs` file.

Tokenising is the one step of a large harvest that needs the corpus and the tokenizer, and nothing else: done
here, the rows travel as one small file to where the model runs (a GPU machine without the corpora, or many
runs that should not each re-read 10 GB of text), and `sae-train` reads them with `data.inputs: RUN/tokens.safetensors`
exactly as it would have packed them itself (same `tokenize` call, same rows).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from anatomist.core.errors import AnatomistError
from anatomist.core.io import save_tensors
from anatomist.core.provenance import data_record
from anatomist.data import CORPUS_HELP, TEXT_FIELD_HELP, load_corpus
from anatomist.nets import load_model
from anatomist.runs.base import Context, Outcome, RunConfig, register

TOKENS_FILE = "tokens.safetensors"


class TokenizeConfig(RunConfig):
    """Pack a corpus into rows of `seq_len` token ids with a model's tokenizer: RUN/tokens.safetensors ('inputs')."""

    kind: Literal["tokenize"] = "tokenize"
    smoke: ClassVar[tuple[str, ...]] = ("n_seqs=4",)
    model: str = Field("smollm2", description="the model whose tokenizer packs the rows (packaged name or HF folder)")
    corpus: str = Field("wiki", description=CORPUS_HELP)
    text_field: str = Field("text", description=TEXT_FIELD_HELP)
    seq_len: int = Field(128, gt=1, description="tokens per row (BOS included)")
    n_seqs: int | None = Field(None, gt=0, description="rows to make (null: the whole corpus); for sae-train, "
                               "its data.n_seqs + data.eval_seqs")


@register(TokenizeConfig)
def tokenize_corpus(cfg: TokenizeConfig, ctx: Context) -> Outcome:
    tokenizer = load_model(cfg.model).tokenizer
    if tokenizer is None:
        raise AnatomistError(f"model '{cfg.model}' has no tokenizer to pack text with")
    rows = load_corpus(cfg.corpus, cfg.text_field).tokenize(tokenizer, cfg.seq_len, cfg.n_seqs)
    # int32 halves the file; every vocabulary in use fits, and embeddings take int32 ids as they are
    ids = rows.to(torch.int32) if int(rows.max()) < 2**31 else rows
    save_tensors(ctx.out / TOKENS_FILE, {"inputs": ids},
                 metadata={"model": cfg.model, "corpus": cfg.corpus, "seq_len": str(cfg.seq_len)})
    numbers = {"n_seqs": len(rows), "seq_len": cfg.seq_len, "n_tokens": int(rows.numel()),
               "distinct_tokens": int(rows.unique().numel()), "file": TOKENS_FILE}
    summary = (f"{cfg.corpus}: {len(rows):,} rows of {cfg.seq_len} {cfg.model} tokens "
               f"({numbers['distinct_tokens']:,} distinct) in {TOKENS_FILE}")
    return Outcome(numbers, summary, data=[data_record(f"{cfg.corpus} ({len(rows)} rows)", rows,
                                                       n_tokens=rows.numel())])
