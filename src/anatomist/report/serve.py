"""`anatomist serve`: the report folder over HTTP on localhost (the pages also work straight from file://)."""

from __future__ import annotations

import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from anatomist.core.errors import AnatomistError

MAX_PORT = 65535


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per request is noise in a terminal
        return


def check_port(port: int) -> None:
    if not 0 <= port <= MAX_PORT:
        raise AnatomistError(f"--port {port}: a TCP port is 0..{MAX_PORT} (0 picks a free one)")


def make_server(folder: str | Path, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for the files under `folder` (port 0 picks a free one: see `server.server_address`)."""
    folder = Path(folder)
    check_port(port)
    if not (folder / "index.html").is_file():
        raise AnatomistError(f"{folder}: no index.html (build it with `anatomist report RUN_DIR` first)")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise AnatomistError(f"cannot serve on {host}:{port} ({e.strerror}); choose another --port") from None
