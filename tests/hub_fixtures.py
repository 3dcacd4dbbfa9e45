"""A Hugging Face Hub stand-in on loopback: the HTTP API that huggingface_hub's HfFileSystem reads datasets
through (repo info, tree listings, paths-info, file resolution with ranges), and a model repository's files
(the planner reads config.json), served from a local directory.

The Hub cannot be reached from the machines this runs on; this is the outermost boundary ftctl talks to when it
reads ``hf://datasets/...``, so the real huggingface_hub client runs against it. Only public datasets at the
``main`` revision; a request with an ``Authorization`` header is recorded (the gated-dataset test reads it).

    hub = FakeHub(root)            # root/datasets/ORG/NAME/..., root/models/ORG/NAME/... are the repos' files
    hub.start(); hub.endpoint      # http://127.0.0.1:PORT  (HF_ENDPOINT)
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, root: Path, gated: tuple[str, ...] = ()):
        self.root = Path(root)
        self.gated = set(gated)  # repo ids that answer 401 without a token
        self.authorizations: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def repo(self, repo_id: str) -> Path:
        return self.root / "datasets" / repo_id

    def model(self, repo_id: str) -> Path:
        return self.root / "models" / repo_id


def _entry(repo: Path, path: Path) -> dict:
    rel = path.relative_to(repo).as_posix()
    if path.is_dir():
        return {"type": "directory", "path": rel, "oid": SHA}
    data = path.read_bytes()
    return {"type": "file", "path": rel, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args):  # quiet
        pass

    # ---------------------------------------------------------------------------------- routing
    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)

    def do_POST(self):
        self._route(head=False)

    def _route(self, head: bool) -> None:
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if self.headers.get("Authorization"):
            self.hub.authorizations.append(self.headers["Authorization"])
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/(revision|tree|paths-info)/([^/]+)(/.*)?)?", path)
        if m:
            repo_id, action, _revision, rest = m.groups()
            if not self._allowed(repo_id):
                return
            repo = self.hub.repo(repo_id)
            if not repo.is_dir():
                return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if action in (None, "revision"):
                siblings = [
                    {"rfilename": p.relative_to(repo).as_posix()} for p in sorted(repo.rglob("*")) if p.is_file()
                ]
                return self._json(200, {"id": repo_id, "sha": SHA, "private": False, "siblings": siblings})
            if action == "tree":
                return self._tree(repo, (rest or "/").strip("/"), query.get("recursive", ["false"])[0] == "true")
            return self._paths_info(repo)
        m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo_id, _revision, file = m.groups()
            if not self._allowed(repo_id):
                return
            return self._file(self.hub.repo(repo_id) / file, head)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)  # a model repository's file
        if m:
            repo_id, _revision, file = m.groups()
            if not self._allowed(repo_id):
                return
            if not self.hub.model(repo_id).is_dir():
                return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return self._file(self.hub.model(repo_id) / file, head)
        self._json(404, {"error": f"not served by the stand-in: {path}"})

    def _allowed(self, repo_id: str) -> bool:
        if repo_id in self.hub.gated and not self.headers.get("Authorization"):
            self._json(401, {"error": "Access to this dataset is restricted"}, {"X-Error-Code": "GatedRepo"})
            return False
        return True

    # ---------------------------------------------------------------------------------- answers
    def _tree(self, repo: Path, sub: str, recursive: bool) -> None:
        base = repo / sub
        if not base.is_dir():
            return self._json(404, {"error": f"{sub} not found"}, {"X-Error-Code": "EntryNotFound"})
        items = sorted(base.rglob("*") if recursive else base.iterdir())
        self._json(200, [_entry(repo, p) for p in items])

    def _paths_info(self, repo: Path) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        try:
            paths = json.loads(body).get("paths", [])
        except json.JSONDecodeError:
            paths = parse_qs(body).get("paths", [])
        found = [repo / p for p in paths]
        self._json(200, [_entry(repo, p) for p in found if p.exists()])

    def _file(self, file: Path, head: bool) -> None:
        if not file.is_file():
            return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        data = file.read_bytes()
        status, start, end = 200, 0, len(data) - 1
        rng = self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())):
            start = int(m.group(1) or 0)
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            status = 206
        body = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", SHA)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def hub_env(endpoint: str) -> dict:
    """What points huggingface_hub at the stand-in in a new process (HF_ENDPOINT is read at import)."""
    return {"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
