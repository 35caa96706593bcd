"""Serve a built site on 127.0.0.1 only (the standard library's http.server in a thread)."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

HOST = "127.0.0.1"  # never another interface: the site may hold unpublished audio


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def serve(folder: str | Path, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    """Start serving ``folder`` in a daemon thread; returns (server, thread). ``port`` 0 picks a free one
    (``server.server_address[1]``). Stop with ``server.shutdown()``."""
    folder = Path(folder)
    if not (folder / "index.html").is_file():
        raise FileNotFoundError(f"{str(folder)!r} holds no index.html: build the site first (musicinterp browse RUN)")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer((HOST, port), handler)
    thread = threading.Thread(target=server.serve_forever, name="musicinterp-browse", daemon=True)
    thread.start()
    return server, thread
