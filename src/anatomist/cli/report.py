"""`anatomist report RUN_DIR`, `anatomist serve RUN_DIR`, and `anatomist dashboard SAE_DIR` (`run dashboard`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from anatomist.cli.run import invoke
from anatomist.data import CORPUS_HELP, TEXT_FIELD_HELP
from anatomist.report.serve import check_port, make_server
from anatomist.report.site import build_report

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]


def report(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (anatomist demo, sae train, spd run, ...)")],
    out: Annotated[Path | None, typer.Option(help="site folder (default RUN_DIR/report)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the static report of a run folder (one folder of HTML; opens from file://, no network)."""
    index = build_report(run_dir, out)
    print(json.dumps({"index": str(index.resolve())}) if as_json else f"report: {index.resolve()}")


def serve(
    run_dir: Annotated[Path, typer.Argument(help="a run folder; its report is built first unless --no-build")],
    port: Annotated[int, typer.Option(help="TCP port on localhost")] = 8000,
    build: Annotated[bool, typer.Option(help="(re)build the report before serving")] = True,
) -> None:
    """Serve a run's report on http://127.0.0.1:PORT until interrupted."""
    check_port(port)  # before a build that may take a while
    folder = build_report(run_dir).parent if build else run_dir / "report"
    server = make_server(folder, port=port)
    print(f"serving {folder} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def dashboard(
    sae_dir: Annotated[Path, typer.Argument(help="a dictionary folder (anatomist, SAELens or sparsify format)")],
    out: Annotated[Path | None, typer.Option(help="dashboard run folder (default: SAE_DIR/../dashboard)")] = None,
    model: Annotated[str | None, typer.Option(help="model (default: the dictionary's metadata)")] = None,
    site: Annotated[str | None, typer.Option(help="site it reads (default: the dictionary's metadata)")] = None,
    corpus: Annotated[str, typer.Option(help=CORPUS_HELP)] = "wiki",
    text_field: Annotated[str, typer.Option(help=TEXT_FIELD_HELP)] = "text",
    n_seqs: Annotated[int, typer.Option(help="sequences of the corpus to pass over")] = 256,
    seq_len: Annotated[int, typer.Option(help="tokens per sequence (BOS included, left out of the rows)")] = 128,
    as_json: JsonOpt = False,
) -> None:
    """Feature dashboard of a dictionary on a language model (`anatomist run dashboard`), activations cached."""
    invoke("dashboard", [], out if out is not None else sae_dir.parent / "dashboard", as_json=as_json,
           extra={"sae": str(sae_dir), "model": model, "site": site, "corpus": corpus, "text_field": text_field,
                  "n_seqs": n_seqs, "seq_len": seq_len})
