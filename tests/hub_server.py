"""A tiny stand-in for the Hugging Face Hub API (``HF_ENDPOINT``) that records what a client sends.

It answers the calls ``HfApi.create_repo`` + ``HfApi.upload_folder`` make: create the repo, the
model card's metadata check, the pre-upload check (every file is uploaded inline, "regular" mode), and the commit, whose
NDJSON body (header + one base64 file per line) is decoded into ``committed``.
"""

from __future__ import annotations

import base64
import gzip
import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from local_server import LocalServer


class HubServer(LocalServer):
    """Run with ``with HubServer() as hub:``; ``hub.url`` is the endpoint, ``hub.requests`` what came in."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.committed: dict[str, bytes] = {}
        self.commit_message: str | None = None
        self.validated_yaml: str | None = None
        self.created: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _body(self) -> bytes:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

            def _reply(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                hub.requests.append(("POST", self.path))
                body = self._body()
                if self.path == "/api/repos/create":
                    request = json.loads(body)
                    repo = "/".join(filter(None, (request.get("organization"), request["name"])))
                    hub.created.append(repo)
                    self._reply(200, {"url": f"{hub.url}/{repo}"})
                elif self.path == "/api/validate-yaml":  # the model card's metadata, checked before a commit
                    hub.validated_yaml = json.loads(body).get("content")
                    self._reply(200, {"errors": [], "warnings": []})
                elif "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                for f in files]})
                elif "/commit/" in self.path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "header":
                            hub.commit_message = item["value"]["summary"]
                        elif item["key"] == "file":
                            hub.committed[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    repo = self.path.removeprefix("/api/models/").split("/commit/")[0]
                    self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'0' * 40}", "commitOid": "0" * 40})
                else:
                    self._reply(404, {"error": f"not handled: {self.path}"})

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path))
                self._reply(404, {"error": f"not handled: {self.path}"})

        self.serve(Handler)
