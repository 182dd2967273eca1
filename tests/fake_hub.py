"""A fake Hugging Face Hub on 127.0.0.1 for offline tests: serves ``/{repo}/resolve/{revision}/{path}`` from a
dict of files (HEAD and ranged GET, the headers huggingface_hub reads), and can cut one transfer short."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, files: dict[str, dict[str, bytes]]):
        self.files = files  # repo -> path -> bytes
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut_next: set[str] = set()  # "repo/path": send half of the body on the next GET, then close
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _lookup(self):
                parts = self.path.split("?")[0].lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return None, None
                repo, path = "/".join(parts[:2]), "/".join(parts[4:])
                from urllib.parse import unquote

                path = unquote(path)
                return f"{repo}/{path}", hub.files.get(repo, {}).get(path)

            def _headers(self, status, body_len, data, extra=None):
                self.send_response(status)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(body_len))
                self.send_header("Content-Type", "application/octet-stream")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()

            def _missing(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path, None))
                key, data = self._lookup()
                if data is None:
                    return self._missing()
                self._headers(200, len(data), data)

            def do_GET(self):
                rng = self.headers.get("Range")
                hub.requests.append(("GET", self.path, rng))
                key, data = self._lookup()
                if data is None:
                    return self._missing()
                start = 0
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0] or 0)
                body = data[start:]
                if start:
                    extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                    self._headers(206, len(body), data, extra)
                else:
                    self._headers(200, len(body), data)
                if key in hub.cut_next:
                    hub.cut_next.discard(key)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
