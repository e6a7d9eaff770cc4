"""A Hub-compatible HTTP server for tests: the part of the Hub API that huggingface_hub 2.x and
transformers 5.x use to push and load model repos, served from plain directories on 127.0.0.1.

Storage: `<root>/<type>s/<org>/<name>/commits/<sha>/` holds the full tree of each commit (built in a staging
folder, then renamed, so a commit lands whole or not at all) and `refs/<branch>` the branch heads. Uploads
are answered `uploadMode: "regular"` (base64 inside the commit), so no LFS or Xet routes are needed. Writes
need an `Authorization` header, as on the Hub. `server.die_on = "<route name>"` makes the server go away when
that route is hit: the connection closes without an answer and the server stops, as when a network drops.

By hand: `python tests/hub_server.py PORT ROOT`, then `HF_ENDPOINT=http://127.0.0.1:PORT`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

_ID = r"(?P<repo>\w[\w.-]*/\w[\w.-]*)"  # org/name; a name never starts with "." (no "..")
_API = rf"/api/(?P<repo_type>models|datasets|spaces)/{_ID}"
ROUTES = [  # (method, name, pattern); revisions arrive URL-quoted (refs%2Fpr%2F1)
    ("POST", "create", r"/api/repos/create"),
    ("POST", "validate_yaml", r"/api/validate-yaml"),
    ("POST", "preupload", rf"{_API}/preupload/(?P<rev>[^/]+)"),
    ("POST", "commit", rf"{_API}/commit/(?P<rev>[^/]+)"),
    ("GET", "tree", rf"{_API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"),
    ("GET", "info", rf"{_API}(?:/revision/(?P<rev>[^/]+))?"),
    ("GET", "resolve", rf"/(?:(?P<repo_type>datasets|spaces)/)?{_ID}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
]


def _route(method: str, path: str) -> tuple[str | None, dict]:
    """(route name, URL arguments) of a request; HEAD is served by the GET routes."""
    for verb, name, pattern in ROUTES:
        match = re.fullmatch(pattern, path)
        if match and verb == ("GET" if method == "HEAD" else method):
            given = {k: v for k, v in match.groupdict().items() if v is not None}
            return name, {"repo_type": "models", **given}
    return None, {}


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the Hub) gives a regular file; huggingface_hub compares it to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _inside(base: Path, relative: str) -> Path:
    """`base / relative`, refusing paths that climb out of `base`."""
    parts = unquote(relative).strip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise HubError(400, f"invalid path {relative!r}")
    return base.joinpath(*parts)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubStore:
    """Repos on disk, one directory per commit."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.lock = threading.Lock()

    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        path = self.root / repo_type / repo_id
        if not (path / "refs").is_dir():
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return path

    def create(self, repo_type: str, repo_id: str) -> bool:
        with self.lock:
            refs = self.root / repo_type / repo_id / "refs"
            if refs.is_dir():
                return False
            refs.mkdir(parents=True)
        # the Hub starts every repo with a .gitattributes commit
        attributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
        self.commit(repo_type, repo_id, "main", "initial commit", [("file", ".gitattributes", attributes)])
        return True

    def head(self, repo_type: str, repo_id: str, rev: str | None) -> tuple[str, Path]:
        """(commit sha, tree folder) of a branch name or a commit sha."""
        path = self.repo_dir(repo_type, repo_id)
        rev = unquote(rev or "main")
        ref = path / "refs" / rev
        sha = ref.read_text().strip() if "/" not in rev and ref.is_file() else rev
        if not re.fullmatch(r"[0-9a-f]{40}", sha) or not (path / "commits" / sha).is_dir():
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return sha, path / "commits" / sha

    def commit(self, repo_type: str, repo_id: str, rev: str, message: str, ops: list,
               parent: str | None = None) -> str:
        """Apply ops [(kind "file" or "delete", path, bytes)] to the branch head; returns the new sha."""
        path, branch = self.root / repo_type / repo_id, unquote(rev)
        if not re.fullmatch(r"\w[\w.-]*", branch):
            raise HubError(400, f"this server commits to plain branch names only, got {branch!r}")
        with self.lock:
            ref = path / "refs" / branch
            current = ref.read_text().strip() if ref.is_file() else None
            if parent is not None and parent != current:
                raise HubError(412, f"A commit has happened since {parent}")
            stage = path / f"staging-{time.time_ns()}"
            if current is None:
                stage.mkdir(parents=True)
            else:
                shutil.copytree(path / "commits" / current, stage)
            digest = hashlib.sha1(f"{current}\n{message}\n{time.time_ns()}".encode())
            for kind, name, data in ops:
                target = _inside(stage, name)
                if kind == "file":
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                elif target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
                digest.update(f"{kind}:{name}:{git_blob_sha1(data)}".encode())
            sha = digest.hexdigest()
            (path / "commits").mkdir(exist_ok=True)
            stage.rename(path / "commits" / sha)
            ref.write_text(sha)
            return sha

    @staticmethod
    def files(tree: Path) -> list[str]:
        return sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())


class HubHandler(BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet: tests read `server.requests` instead
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str):
        url = urlparse(self.path)
        self.query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        name, args = _route(method, url.path)
        if name is None:
            return self._send(404, {"error": f"no route for {method} {url.path}"})
        if self.server.die_on == name:
            return self._go_away()
        try:
            if method == "POST" and name != "validate_yaml" and not self.headers.get("Authorization"):
                raise HubError(401, "Invalid credentials in Authorization header")
            getattr(self, f"route_{name}")(**args)
        except Exception as exc:  # every failure becomes an answer, as on the Hub
            err = exc if isinstance(exc, HubError) else HubError(500, f"{type(exc).__name__}: {exc}")
            headers = {"X-Error-Message": err.message, **({"X-Error-Code": err.code} if err.code else {})}
            self._send(err.status, {"error": err.message}, {**headers, **err.headers})

    def _go_away(self):
        self.server.requests.append((self.command, self.path, 0))
        threading.Thread(target=self.server.stop, daemon=True).start()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(payload).encode()
        self.server.requests.append((self.command, self.path, status))
        self.send_response(status)
        content_type = "application/octet-stream" if raw is not None else "application/json"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # -- routes -------------------------------------------------------------------------------------------

    def route_create(self, repo_type):
        payload = json.loads(self.body)
        repo_type = (payload.get("type") or "model") + "s"
        if not payload.get("organization"):
            raise HubError(400, "this server needs a namespace: create 'org/name'")
        repo_id = f"{payload['organization']}/{payload['name']}"
        if not re.fullmatch(_ID, repo_id):
            raise HubError(400, f"invalid repo id {repo_id!r}")
        created = self.server.store.create(repo_type, repo_id)
        answer = {"url": f"{self.server.url}/{repo_id}", "name": repo_id}  # a 409 carries the url too
        if not created:
            answer["error"] = "You already created this repo"
        self._send(200 if created else 409, answer)

    def route_validate_yaml(self, repo_type):
        lines = json.loads(self.body)["content"].splitlines()
        if lines and lines[0].strip() == "---" and "---" not in (line.strip() for line in lines[1:]):
            raise HubError(400, "metadata block is not closed")  # the Hub checks the YAML itself too
        self._send(200, {"errors": [], "warnings": []})

    def route_preupload(self, repo_type, repo, rev):
        _, tree = self.server.store.head(repo_type, repo, rev)
        files = []
        for item in json.loads(self.body)["files"]:
            existing = _inside(tree, item["path"])
            oid = git_blob_sha1(existing.read_bytes()) if existing.is_file() else None
            files.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": files, "commitOid": None})

    def route_commit(self, repo_type, repo, rev):
        self.server.store.repo_dir(repo_type, repo)
        if self.query.get("create_pr"):
            raise HubError(400, "pull requests are not supported by this test server")
        header, ops = {}, []
        for line in self.body.decode().splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                ops.append(("file", value["path"], base64.b64decode(value["content"])))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append(("delete", value["path"].rstrip("/"), b""))
            else:
                raise HubError(400, f"unsupported commit operation {key!r} (only regular uploads here)")
        sha = self.server.store.commit(repo_type, repo, rev, header.get("summary", ""), ops,
                                       header.get("parentCommit"))
        self._send(200, {"success": True, "commitOid": sha, "hookOutput": "", "pullRequestUrl": None,
                         "commitUrl": f"{self.server.url}/{repo}/commit/{sha}"})

    def route_info(self, repo_type, repo, rev=None):
        sha, tree = self.server.store.head(repo_type, repo, rev)
        siblings = [{"rfilename": name, "size": (tree / name).stat().st_size}
                    for name in HubStore.files(tree)]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(tree.stat().st_mtime))
        self._send(200, {"_id": sha[:24], "id": repo, "modelId": repo, "sha": sha, "private": False,
                         "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
                         "siblings": siblings, "lastModified": stamp, "createdAt": stamp})

    def route_tree(self, repo_type, repo, rev, path=""):
        _, tree = self.server.store.head(repo_type, repo, rev)
        base = _inside(tree, path) if path.strip("/") else tree
        if not base.is_dir():
            raise HubError(404, f"{path} does not exist in {repo}", "EntryNotFound")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = []
        for item in sorted(base.rglob("*") if recursive else base.iterdir()):
            name = item.relative_to(tree).as_posix()
            if item.is_dir():
                oid = hashlib.sha1(name.encode()).hexdigest()
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": name})
            else:
                data = item.read_bytes()
                entries.append({"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name})
        self._send(200, entries)

    def route_resolve(self, repo_type, repo, rev, path):
        sha, tree = self.server.store.head(repo_type, repo, rev)
        target = _inside(tree, path)
        if not target.is_file():
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        data = target.read_bytes()
        self._send(200, headers={"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(data)}"'}, raw=data)


class HubServer(ThreadingHTTPServer):
    """`HubServer(root).start()` serves in a daemon thread; `server.url` is the HF_ENDPOINT for clients."""

    daemon_threads = True

    def __init__(self, root: str | Path, port: int = 0):
        super().__init__(("127.0.0.1", port), HubHandler)
        self.store = HubStore(root)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.die_on: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def use_in_process(self, monkeypatch) -> None:
        """Point this process's huggingface_hub and transformers at the server (`monkeypatch` undoes it). They
        read the endpoint once, at import: patch the constants they read, and drop transformers' cached HfApi
        (bound to the endpoint it was created with)."""
        from huggingface_hub import constants
        from transformers.utils import hub as transformers_hub

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest's HF_HUB_OFFLINE=1 is for loading
        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            self.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(transformers_hub, "_hf_api", None)

    def stop(self):
        if self._thread is not None:
            self.shutdown()
            self._thread = None
        self.server_close()


if __name__ == "__main__":
    server = HubServer(sys.argv[2], int(sys.argv[1]))
    print(f"serving {sys.argv[2]} at {server.url}", flush=True)
    server.serve_forever()
