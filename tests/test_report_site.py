"""Dashboard JSON (planted answers), the static site without a browser, provenance records, serve."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import report_fixtures as fx
from anatomist.cli import app
from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json
from anatomist.core.provenance import read_provenance, weights_hash, write_provenance
from anatomist.nets.assets import LoadedModel
from anatomist.report.dashboard import Source, nearest_latents
from anatomist.report.serve import make_server
from anatomist.report.site import build_report
from conftest import tiny_llama


def test_token_dashboard_recovers_planted_latents(tmp_path: Path) -> None:
    sae, tokens = fx.token_dashboard(tmp_path)
    index = load_json(tmp_path / "dashboard.json")
    assert index["n_rows"] == tokens.numel() and index["d_sae"] == fx.D_SAE
    for c in range(index["n_chunks"]):
        chunk = load_json(tmp_path / f"latents_{c:03d}.json")
        for rec in chunk["latents"]:
            i = rec["i"]
            # latent j reads token j's embedding: the centre of every top context is token j (2..: 0/1 read markup)
            want = fx.VOCAB[i] if i >= 2 else (fx.SCRIPT_TOKEN, fx.IMG_TOKEN)[i]
            centres = {chunk["tokens"][str(ex["ctx"][4])] for ex in rec["top"][:2]}
            assert centres == {want}
            # its decoder row is token i's embedding direction: through the embedding it promotes token i most
            assert chunk["tokens"][str(rec["logits"]["pos"][0][0])] == fx.VOCAB[i]
            acts = [ex["act"] for ex in rec["top"]]
            assert acts == sorted(acts, reverse=True)
    assert index["latents"]["top_tokens"][7][0] == "tok7"


def test_nearest_latents_match_brute_force() -> None:
    w = torch.randn(30, 8)
    idx, cos = nearest_latents(w, k=3, chunk=7)
    unit = w / w.norm(dim=1, keepdim=True)
    sim = unit @ unit.T - 10 * torch.eye(30)
    torch.testing.assert_close(cos, sim.topk(3, dim=1).values)
    assert torch.equal(idx, sim.topk(3, dim=1).indices)


def test_image_dashboard_top_images(tmp_path: Path) -> None:
    fx.image_dashboard(tmp_path)
    chunk = load_json(tmp_path / "latents_000.json")
    for rec in chunk["latents"]:
        assert rec["top"], "every bar latent fires"
        assert all(ex["row"] % 8 == rec["i"] for ex in rec["top"])  # images with the bar on row i
        assert str(rec["top"][0]["row"]) in chunk["images"]


def test_report_lists_what_is_missing(tmp_path: Path) -> None:
    run = fx.run_folder(tmp_path)
    (run / "provenance.json").unlink()
    (run / "sae" / "dashboard" / "latents_002.json").write_text("{not json")
    html = build_report(run).read_text()
    assert "provenance.json: missing" in html
    assert "latents_002.json: not valid JSON" in html
    with pytest.raises(AnatomistError, match="no such run folder"):
        build_report(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    with pytest.raises(AnatomistError, match="not an anatomist report"):
        build_report(run, tmp_path / "other")  # never deletes a folder it did not write


def test_overview_summary_table_across_parts(tmp_path: Path) -> None:
    """One row per part with a metrics.json (kind, summary, shared measures) before the part links; no placeholders."""
    html = build_report(fx.run_folder(tmp_path)).read_text()
    summary = html[html.index('id="summary"'):]
    summary = summary[: summary.index("</table>")]
    assert html.index('id="summary"') < html.index("Parts of this run")
    header = summary[: summary.index("</thead>")]
    for col in ("part", "kind", "summary", "fvu", "l0", "ce_increase", "kl", "dead_fraction", "mmcs", "ml2r", "alive"):
        assert f"<th>{col}</th>" in header
    assert "loss_recovered" not in header and "bits_per_input" not in header  # no part has them
    rows = summary.split("<tr>")[2:]  # the header row, then (this run), sae, spd
    assert [re.sub("<[^>]+>", "", r.split("</td>")[0]) for r in rows] == ["(this run)", "sae", "spd"]
    assert "sae-train" in rows[1] and "FVU 0.12 at L0 32" in rows[1] and "<td>0.12</td>" in rows[1]
    assert "— (not finite)" in rows[1]  # its kl was nan: said, not 'nan'
    assert "spd-toy" in rows[2] and "<td>0.99</td>" in rows[2] and "<td>5</td>" in rows[2]  # alive: layers table
    assert 'href="sections/spd.html"' in rows[2]
    for page in [html, (tmp_path / "run" / "report" / "sections" / "sae.html").read_text()]:
        assert ">None<" not in page and ">nan<" not in page and "seed: None" not in page


def test_report_cli_and_serve(tmp_path: Path) -> None:
    run = fx.run_folder(tmp_path)
    res = CliRunner().invoke(app, ["report", str(run), "--json"])
    assert res.exit_code == 0, res.output
    index = Path(load_json_text(res.output)["index"])
    server = make_server(index.parent, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/features/sae__dashboard/data/index.js"
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        assert body.startswith('anatomist.data("index"') and "<script>" not in body  # '<' escaped in data
    finally:
        server.shutdown()
        server.server_close()


def load_json_text(text: str) -> dict[str, str]:
    import json

    return dict(json.loads(text.strip().splitlines()[-1]))


def test_provenance_records_weights_exactly(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 3)
    before = weights_hash(model)
    with torch.no_grad():
        model.weight[1, 2] += 1e-6
    assert weights_hash(model) != before
    write_provenance(tmp_path, models=[{"name": "m", "weights_sha256": before}], config={"lr": 1.0}, seed=3,
                     access=["gradients", "outputs"])
    rec = read_provenance(tmp_path)
    assert rec["access"] == ["outputs", "gradients"] and rec["seed"] == 3 and rec["packages"]["torch"]
    with pytest.raises(AnatomistError, match="unknown access"):
        write_provenance(tmp_path, access=["telepathy"])
    with pytest.raises(AnatomistError, match="provenance.json: missing"):
        read_provenance(tmp_path / "none")


def test_sae_training_records_provenance(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from anatomist.runs import parse_run_config, run

    model = tiny_llama(2, 16, 32, 50)
    ids = torch.randint(1, 50, (12, 8), generator=torch.Generator().manual_seed(1))
    model.save_pretrained(tmp_path / "tiny")
    save_file({"inputs": ids}, str(tmp_path / "ids.safetensors"))
    cfg = parse_run_config(dict(kind="sae-train", model=str(tmp_path / "tiny"), site="model.layers.1", steps=3,
                                batch_size=16, seed=7, sae=dict(arch="topk", d_in=16, d_sae=32, k=4),
                                data=dict(cache=None, block_seqs=4, buffer_rows=48, model_batch_size=4, eval_seqs=4,
                                          inputs=str(tmp_path / "ids.safetensors"))))
    want = weights_hash(model)
    run(cfg, tmp_path)
    rec = read_provenance(tmp_path)
    assert rec["models"][0] == {"name": str(tmp_path / "tiny"), "weights_sha256": want, "parameters": sum(
        p.numel() for p in model.parameters())}
    assert rec["data"][0]["n_tokens"] == 8 * 7  # 8 training sequences of 8 tokens, BOS left out
    # the data used, not the corpus
    assert rec["data"][0]["name"] == f"inputs file {tmp_path / 'ids.safetensors'} (train, rows 0..8)"
    assert rec["access"] == ["outputs", "activations"] and rec["seed"] == 7 and rec["config"]["steps"] == 3
    assert "access used" in build_report(tmp_path).read_text()


def test_demo_ends_with_its_report(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--part", "tms", "--json"])
    assert result.exit_code == 0, result.output
    index = Path(json.loads(result.stdout)["report"])
    assert index == (tmp_path / "report" / "index.html").resolve() and index.is_file()
    html = index.read_text()
    assert 'id="summary"' in html and "toy-train" in html and "angle gaps 72°" in html  # the parts table first
    assert 'href="sections/tms.html"' in html and 'class="problems"' not in html
    part = (index.parent / "sections" / "tms.html").read_text()
    assert "tms_columns.png" in part and "final_loss" in part
    rec = read_provenance(tmp_path)
    assert rec["access"] == ["weights", "training_data"] and rec["config"]["parts"] == ["tms"]


class _Tok:
    def decode(self, ids: list[int]) -> str:
        return f"t{ids[0]}"


def test_lm_dashboard_rows_line_up_with_tokens(tmp_path: Path) -> None:
    """Over a cached ActivationStore (BOS left out), every top example names the row where the latent has that value."""
    from types import SimpleNamespace

    from anatomist.features import SAEConfig, make_sae
    from anatomist.nets.sites import Site, capture
    from anatomist.report.sources import lm_dashboard, unembedding

    model = tiny_llama(2, 16, 32, 50)
    with torch.no_grad():
        model.model.norm.weight.uniform_(0.5, 2.0)
    ids = torch.randint(1, 50, (10, 9), generator=torch.Generator().manual_seed(1))
    sae = make_sae(SAEConfig(arch="topk", d_in=16, d_sae=12, k=3))
    loaded = SimpleNamespace(model=model, tokenizer=_Tok())
    lm_dashboard(sae, tmp_path / "d", model_name="tiny", site="model.layers.0", tokens=ids, loaded=loaded,
                 block_seqs=3, cache=tmp_path / "cache", top_k=4, before=2, after=1)
    with torch.no_grad():
        acts = sae.encode(capture(model, ids, [Site("model.layers.0")])[Site("model.layers.0")])[:, 1:]  # [10, 8, 12]
    chunk = load_json(tmp_path / "d" / "latents_000.json")
    assert load_json(tmp_path / "d" / "dashboard.json")["n_rows"] == 10 * 8
    for rec in chunk["latents"]:
        i = rec["i"]
        col = acts[..., i].flatten()
        assert [ex["act"] for ex in rec["top"]] == pytest.approx(col.topk(len(rec["top"])).values.tolist(), abs=2e-3)
        for ex in rec["top"]:
            s, p = divmod(ex["row"], 8)
            assert ex["ctx"][2] == int(ids[s, p + 1])  # the centre token is the one at that position
            assert ex["acts"][2] == pytest.approx(float(acts[s, p, i]), abs=2e-3)
            if p == 0:
                assert ex["ctx"][:2] == [-1, -1]  # nothing before the first kept position (BOS left out)
    w = unembedding(model)
    assert w is not None
    torch.testing.assert_close(w, model.lm_head.weight * model.model.norm.weight)


class _BosTok(_Tok):
    bos_token_id = 0


def test_dashboard_kind_writes_a_run_folder_the_report_links(tmp_path: Path, tmp_cache: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`anatomist run dashboard`: the dashboard plus config.yaml, metrics.json, provenance.json; a summary row."""
    from types import SimpleNamespace

    from anatomist.core.metrics import read_metrics
    from anatomist.features import SAEConfig, make_sae, save_sae
    from anatomist.runs import dashboard as kind
    from anatomist.runs import run

    model = tiny_llama(2, 16, 32, 50)
    ids = torch.randint(1, 50, (6, 9), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(kind, "load_model", lambda name: SimpleNamespace(model=model, tokenizer=_BosTok()))
    corpus = SimpleNamespace(tokenize=lambda tok, seq_len, n_seqs: ids)
    monkeypatch.setattr(kind, "load_corpus", lambda name, *_: corpus)
    save_sae(make_sae(SAEConfig(arch="topk", d_in=16, d_sae=12, k=3)), tmp_path / "run" / "sae",
             metadata={"model": "tiny", "site": "model.layers.0"})
    out = tmp_path / "run" / "dashboard"
    result = run(kind.DashboardConfig(sae=str(tmp_path / "run" / "sae"), n_seqs=6, seq_len=9, block_seqs=3), out)
    assert result.metrics["tokens"] == 6 * 8 and result.metrics["latents"] == 12 and "12 latents" in result.summary
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "metrics.json", "provenance.json", "dashboard.json"}
    assert read_metrics(out)[0] == "dashboard"
    assert read_provenance(out)["access"] == ["activations", "weights"]
    html = build_report(tmp_path / "run").read_text()
    assert 'href="features/dashboard/index.html">dashboard</a>' in html and "<td>dashboard</td>" in html
    res = CliRunner().invoke(app, ["dashboard", str(tmp_path / "run" / "sae"), "--n-seqs", "6", "--seq-len", "9",
                                   "--out", str(tmp_path / "cli"), "--json"])
    assert res.exit_code == 0, res.output
    assert load_json_text(res.output)["kind"] == "dashboard" and (tmp_path / "cli" / "dashboard.json").is_file()


def _byte_source(vocab: list[bytes]) -> Source:
    """A byte-level vocabulary: token i is vocab[i], decoded like a byte-level BPE tokenizer decodes."""
    def decode(ids: list[int]) -> str:
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
    return Source(tokens=torch.zeros(1, 1, dtype=torch.long), positions=torch.zeros(1, 2, dtype=torch.long),
                  decode=decode)


def test_tokens_splitting_a_character_show_it_once_where_it_completes() -> None:
    euro = "€".encode()  # 3 bytes, one token each
    src = _byte_source([b"a", b"\xc3", b"\xa9", euro[:1], euro[1:2], euro[2:], b" b"])
    assert src.context_text([0, 6]) is None  # every token is whole text: the per-token names are right
    assert src.context_text([0, 1, 2, 6]) == ["a", "", "é", " b"]
    assert src.context_text([3, 4, 5, 0]) == ["", "", "€", "a"]
    # a context that starts inside a character: the orphan byte stays as it decodes, later characters still join
    assert src.context_text([2, 0, 1, 2, -1]) == ["\ufffd", "a", "", "é", ""]


def test_real_tokenizer_contexts_read_as_the_text(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    text = "naïve café costs 5€ in 東京"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    src = Source(tokens=torch.tensor([ids]), positions=torch.zeros(1, 2, dtype=torch.long),
                 decode=lambda i: str(tok.decode(i)))
    assert any("\ufffd" in src.name(i) for i in ids)  # the tokenizer does split characters here
    shown = src.context_text(ids)
    assert shown is not None and "".join(shown) == text
