"""A local HTTP server on a free port for the tests' fake services (the Hub, a dataset release), as a context manager."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LocalServer:
    """Serves `handler` on 127.0.0.1 (``url``) from a daemon thread between ``__enter__`` and ``__exit__``."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        """Bind `handler` to a free port (call once, from the subclass's ``__init__``)."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
