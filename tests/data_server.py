"""A tiny static file server for the prepare tests: HTTP Range, and faults on purpose.

``files`` maps a URL path to its bytes. ``cut_once`` paths send their headers (full length) and half
the body, then drop the connection, once; ``corrupt_once`` paths send different bytes of the same
length once; ``no_range`` paths ignore Range (a plain 200). ``requests`` records (path, Range header).
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

from local_server import LocalServer


class DataServer(LocalServer):
    """Run with ``with DataServer({"/x.tar": data}) as server:``; ``server.url`` is its origin."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.cut_once: set[str] = set()
        self.corrupt_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                server.requests.append((path, self.headers.get("Range")))
                if path not in server.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files[path]
                if path in server.corrupt_once:
                    server.corrupt_once.discard(path)
                    data = bytes(255 - byte for byte in data)
                start = 0
                ranged = self.headers.get("Range")
                if ranged and ranged.startswith("bytes="):
                    start = int(ranged[len("bytes="):].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if path in server.cut_once:
                    server.cut_once.discard(path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # drop it mid-file, as a flaky network does
                    return
                self.wfile.write(body)

        self.serve(Handler)

    def gets(self, path: str) -> list[str | None]:
        """The Range header of every GET of `path` (None: a plain request)."""
        return [ranged for requested, ranged in self.requests if requested == path]
