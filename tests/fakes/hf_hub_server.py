"""A real HTTP/1.1 stand-in for the Hugging Face Hub on loopback, for tests: point `HF_ENDPOINT` at `.url`.

It serves the part of the Hub's API that `huggingface_hub` / `datasets` use to stream a dataset repository:

  GET  /api/datasets/{repo}                           repo info (sha, siblings, gated, cardData)
  GET  /api/datasets/{repo}/revision/{rev}            the same at a branch, tag or commit
  GET  /api/datasets/{repo}/tree/{rev}[/{path}]       tree listing (`recursive`), paged with a `Link` header
  POST /api/datasets/{repo}/paths-info/{rev}          info on given paths (form field `paths`, repeated)
  GET  /api/datasets/{repo}/refs                      branches and tags
  HEAD|GET /datasets/{repo}/resolve/{rev}/{path}      a file: ETag, X-Repo-Commit, X-Linked-Size, Range → 206

Errors answer like the Hub: a status plus `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`,
`GatedRepo`) and `X-Error-Message`. A gated repository's metadata and listing are public, as on the Hub; its files
answer 401 `GatedRepo` without a token and 403 with a token that has no access (only `FakeHub.token` has).

Every request is logged (`FakeHub.requests`: method, path, Range header, status, bytes sent); requests the fake
does not know are logged with status 404 and kept in `FakeHub.unknown`, which is how a test notices that the
libraries started asking for something new.

    hub = FakeHub(token="hf_...")
    hub.add_dataset("org/chat", {"main": {"README.md": b"...", "data/train.jsonl": b"..."}},
                    tags={"v1": "main"})
    with hub:
        os.environ["HF_ENDPOINT"] = hub.url  # before huggingface_hub is imported (it reads it once)
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PAGE_SIZE = 2  # small, so that listings are paged even for a tiny repository
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)  # by sha
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    tags: set[str] = field(default_factory=set)  # which refs are tags (the others are branches)
    gated: bool = False

    def resolve(self, revision: str) -> Commit | None:
        sha = self.refs.get(revision, revision if _SHA.match(revision) else None)
        return self.commits.get(sha) if sha else None


@dataclass
class Logged:
    method: str
    path: str
    range: str | None
    status: int
    sent: int  # body bytes sent
    authorized: bool


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Unknown(Exception):
    def __init__(self, sent: int) -> None:
        self.sent = sent


def _oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # a git blob id, as the Hub reports


class FakeHub:
    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[Logged] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content ---------------------------------------------------------------------------------------------
    def add_dataset(self, repo_id: str, branches: dict[str, dict[str, bytes]], *,
                    tags: dict[str, str] | None = None, gated: bool = False) -> Repo:
        """A dataset repo with one commit per branch (`{branch: {path: bytes}}`); `tags` name a branch's commit.
        Commit shas derive from the content, so they are stable across runs."""
        repo = Repo(repo_id, gated=gated)
        for branch, files in branches.items():
            digest = hashlib.sha1(repo_id.encode() + b"\0" + branch.encode())
            for path in sorted(files):
                digest.update(path.encode() + b"\0" + files[path])
            commit = Commit(digest.hexdigest(), dict(files))
            repo.commits[commit.sha] = commit
            repo.refs[branch] = commit.sha
        for tag, branch in (tags or {}).items():
            repo.refs[tag] = repo.refs[branch]
            repo.tags.add(tag)
        self.repos[repo_id] = repo
        return repo

    def sha(self, repo_id: str, revision: str = "main") -> str:
        return self.repos[repo_id].refs[revision]

    # -- observation -----------------------------------------------------------------------------------------
    def log(self) -> list[Logged]:
        with self._lock:
            return list(self.requests)

    @property
    def unknown(self) -> list[Logged]:
        return [r for r in self.log() if r.status == 404 and r.path.startswith("?")]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def file_reads(self, repo_id: str, suffix: str = "") -> list[Logged]:
        """GETs of files of `repo_id` whose path ends with `suffix`."""
        prefix = f"/datasets/{repo_id}/resolve/"
        return [r for r in self.log() if r.method == "GET" and r.path.startswith(prefix)
                and r.path.endswith(suffix)]

    # -- server ----------------------------------------------------------------------------------------------
    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hf-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the FakeHub first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- the API ---------------------------------------------------------------------------------------------
    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(401, "RepoNotFound", "Repository not found")  # the Hub answers 401 for unknown repos
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return commit

    def _check_access(self, repo: Repo, auth: str | None) -> None:
        if not repo.gated:
            return
        if auth is None:
            raise HubError(401, "GatedRepo", f"Access to dataset {repo.repo_id} is restricted. You must have "
                                             f"access to it and be authenticated to access it. Please log in.")
        if auth != self.token:
            raise HubError(403, "GatedRepo", f"Access to dataset {repo.repo_id} is restricted and you are not in "
                                             f"the authorized list. Visit the dataset page to ask for access.")

    def repo_info(self, repo_id: str, revision: str) -> dict[str, Any]:
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        card = _card_data(commit.files.get("README.md", b""))
        return {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo_id.split("/")[0],
            "sha": commit.sha, "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
            "private": False, "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0,
            "likes": 0, "tags": [], "cardData": card,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }

    def refs(self, repo_id: str) -> dict[str, Any]:
        repo = self._repo(repo_id)

        def ref(name: str, kind: str) -> dict[str, str]:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": repo.refs[name]}

        return {"branches": [ref(n, "heads") for n in sorted(repo.refs) if n not in repo.tags],
                "converts": [], "tags": [ref(n, "tags") for n in sorted(repo.tags)]}

    def tree(self, repo_id: str, revision: str, path: str, recursive: bool) -> list[dict[str, Any]]:
        commit = self._commit(self._repo(repo_id), revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            if prefix[:-1] in commit.files:
                raise HubError(400, None, f"{prefix[:-1]} is a file, not a directory")
            raise HubError(404, "EntryNotFound", f"{prefix[:-1]} does not exist on {revision}")
        entries: dict[str, dict[str, Any]] = {}
        for p in sorted(commit.files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):].split("/")
            for depth in range(1, len(rest)):  # folders on the way
                if not recursive and depth > 1:
                    break
                folder = prefix + "/".join(rest[:depth])
                entries.setdefault(folder, {"type": "directory", "oid": _oid(folder.encode()), "size": 0,
                                            "path": folder})
            if recursive or len(rest) == 1:
                entries[p] = _file_entry(p, commit.files[p])
        return [entries[k] for k in sorted(entries)]

    def paths_info(self, repo_id: str, revision: str, paths: list[str]) -> list[dict[str, Any]]:
        commit = self._commit(self._repo(repo_id), revision)
        out = []
        for p in paths:
            p = p.strip("/")
            if p in commit.files:
                out.append(_file_entry(p, commit.files[p]))
            elif any(f.startswith(p + "/") for f in commit.files):
                out.append({"type": "directory", "oid": _oid(p.encode()), "size": 0, "path": p})
        return out

    def file(self, repo_id: str, revision: str, path: str, auth: str | None) -> tuple[Commit, bytes]:
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        self._check_access(repo, auth)
        if path not in commit.files:
            raise HubError(404, "EntryNotFound", f"Entry not found: {path}")
        return commit, commit.files[path]


def _file_entry(path: str, data: bytes) -> dict[str, Any]:
    return {"type": "file", "oid": _oid(data), "size": len(data), "path": path}


def _card_data(readme: bytes) -> dict[str, Any]:
    text = readme.decode("utf-8", "replace")
    if not text.startswith("---"):
        return {}
    import yaml

    head = text.split("---", 2)
    return (yaml.safe_load(head[1]) or {}) if len(head) == 3 else {}


_API = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+)(?P<rest>/.*)?$")
_RESOLVE = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    # -- plumbing --------------------------------------------------------------------------------------------
    def _auth(self) -> str | None:
        value = self.headers.get("Authorization") or ""
        return value[7:].strip() if value.lower().startswith("bearer ") else None

    def _record(self, method: str, path: str, status: int, sent: int) -> None:
        with self.fake._lock:
            self.fake.requests.append(Logged(method, path, self.headers.get("Range"), status, sent,
                                             self._auth() is not None))

    def _send(self, method: str, status: int, body: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)
            return len(body)
        return 0

    def _json(self, method: str, value: Any, headers: dict[str, str] | None = None) -> int:
        return self._send(method, 200, json.dumps(value).encode(), headers)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        body = self._read_body() if method == "POST" else b""
        try:
            status, sent = self._route(method, path, query, body)
            self._record(method, path, status, sent)
        except _Unknown as unknown:
            self._record(method, "?" + path, 404, unknown.sent)
        except HubError as exc:
            headers = {"X-Error-Message": exc.message}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            self._send(method, exc.status, json.dumps({"error": exc.message}).encode(), headers)
            self._record(method, path, exc.status, 0)
        except (BrokenPipeError, ConnectionResetError):
            self._record(method, path, 499, 0)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, int]:
        m = _RESOLVE.match(path)
        if m and method in ("GET", "HEAD"):
            return self._resolve(method, m["repo"], unquote(m["rev"]), unquote(m["path"]))
        m = _API.match(path)
        if m:
            repo_id, rest = m["repo"], m["rest"] or ""
            if rest == "" and method == "GET":
                return 200, self._json(method, self.fake.repo_info(repo_id, "main"))
            if rest == "/refs" and method == "GET":
                return 200, self._json(method, self.fake.refs(repo_id))
            parts = rest.split("/", 3)  # "", verb, rev, path
            if len(parts) >= 3 and parts[1] == "revision" and method == "GET":
                return 200, self._json(method, self.fake.repo_info(repo_id, unquote("/".join(parts[2:]))))
            if len(parts) >= 3 and parts[1] == "tree" and method == "GET":
                return self._tree(method, path, repo_id, unquote(parts[2]),
                                  unquote(parts[3]) if len(parts) > 3 else "", query)
            if len(parts) == 3 and parts[1] == "paths-info" and method == "POST":
                form = parse_qs(body.decode())
                paths = form.get("paths", [])
                return 200, self._json(method, self.fake.paths_info(repo_id, unquote(parts[2]), paths))
        if path == "/" and method in ("GET", "HEAD"):  # the home page (tuneq probes the endpoint with a HEAD)
            return 200, self._send(method, 200, b"<html>fake hub</html>", content_type="text/html")
        if path == "/api/agent-harnesses" and method == "GET":  # huggingface_hub's agent detection registry
            return 200, self._json(method, {"standardEnvVars": [], "harnesses": {}})
        # Unknown to the fake: logged with a "?" so tests can list what the libraries asked for.
        raise _Unknown(self._send(method, 404, b'{"error": "unknown to the fake hub"}',
                                  {"X-Error-Message": "unknown"}))

    def _tree(self, method: str, path: str, repo_id: str, revision: str, sub: str,
              query: dict[str, list[str]]) -> tuple[int, int]:
        recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
        entries = self.fake.tree(repo_id, revision, sub, recursive)
        start = int((query.get("cursor") or ["0"])[0])
        page = entries[start:start + PAGE_SIZE]
        headers = {}
        if start + PAGE_SIZE < len(entries):
            params = f"recursive={str(recursive).lower()}&expand=false&cursor={start + PAGE_SIZE}"
            headers["Link"] = f'<{self.fake.url}{path}?{params}>; rel="next"'
        return 200, self._json(method, page, headers)

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> tuple[int, int]:
        commit, data = self.fake.file(repo_id, revision, path, self._auth())
        etag = f'"{_oid(data)}"'
        headers = {"ETag": etag, "X-Repo-Commit": commit.sha, "X-Linked-Size": str(len(data)),
                   "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or (not m[1] and not m[2]):
                raise HubError(416, None, "bad range")
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), len(data) - 1) if m[2] else len(data) - 1
            else:
                start, end = max(len(data) - int(m[2]), 0), len(data) - 1
            if start >= len(data):
                headers["Content-Range"] = f"bytes */{len(data)}"
                return 416, self._send(method, 416, b"", headers)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, self._send(method, 206, data[start:end + 1], headers, "application/octet-stream")
        return 200, self._send(method, 200, data, headers, "application/octet-stream")

