"""A local stand-in for the Hugging Face Hub's `resolve` endpoint, on 127.0.0.1.

It serves `/{owner}/{repo}/resolve/{revision}/{file}` from files the test
writes, with the headers `huggingface_hub` reads: `Content-Length`, `ETag`
(the SHA-256 of an LFS file, the git blob SHA-1 of a small one) and
`X-Repo-Commit`; a missing repo or file gets the Hub's 404 with
`X-Error-Code`. Faults for the error tests: `cut` (the body stops halfway
while HEAD announced the whole size) and `corrupt` (the right size, other
bytes). Usable as `python hub_server.py ROOT PORT_FILE` in another process.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import sys
import threading
import urllib.parse

LFS_SUFFIXES = (".safetensors", ".bin")


def etag_of(name: str, data: bytes) -> str:
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """`root/<owner>/<repo>/<file>` served as the Hub's `main` revision.

    Attributes:
        faults: `{(repo_id, filename): "cut" | "corrupt"}`.
        requests: `(method, path)` of every request served.
    """

    def __init__(self, root):
        self.root = str(root)
        self.faults: dict[tuple[str, str], str] = {}
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):  # noqa: N802 - http.server's naming
                server._answer(self, body=False)

            def do_GET(self):  # noqa: N802
                server._answer(self, body=True)

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _commit(self, repo_dir: str) -> str:
        digest = hashlib.sha1(repo_dir.encode())
        for name in sorted(os.listdir(repo_dir)):
            digest.update(
                name.encode() + str(os.path.getmtime(os.path.join(repo_dir, name))).encode()
            )
        return digest.hexdigest()

    def _answer(self, handler, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(handler.path).path)
        self.requests.append((handler.command, path))
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(handler, 404, "RepoNotFound", body)
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        repo_dir = os.path.join(self.root, *parts[:2])
        if not os.path.isdir(repo_dir):
            return self._error(handler, 404, "RepoNotFound", body)
        commit = self._commit(repo_dir)
        if revision not in ("main", commit):
            return self._error(handler, 404, "RevisionNotFound", body)
        file_path = os.path.join(repo_dir, *filename.split("/"))
        if not os.path.isfile(file_path):
            return self._error(handler, 404, "EntryNotFound", body, commit)
        with open(file_path, "rb") as f:
            data = f.read()
        fault = self.faults.get((repo_id, filename))
        payload = data
        if fault == "cut":
            payload = data[: len(data) // 2]
        elif fault == "corrupt":
            payload = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        handler.send_response(200)
        handler.send_header("ETag", f'"{etag_of(filename, data)}"')
        handler.send_header("X-Repo-Commit", commit)
        # HEAD announces the whole file; a cut GET sends (and declares) half.
        handler.send_header("Content-Length", str(len(payload) if body else len(data)))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        if body:
            handler.wfile.write(payload)

    def _error(self, handler, status, code, body, commit=None):
        message = f"{code}".encode()
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", code)
        if commit:
            handler.send_header("X-Repo-Commit", commit)
        handler.send_header("Content-Length", str(len(message)))
        handler.end_headers()
        if body:
            handler.wfile.write(message)


def write_repo(root, repo_id: str, files: dict[str, bytes]) -> str:
    """Write `files` as the Hub repo `repo_id` under `root`; returns its folder."""
    folder = os.path.join(str(root), *repo_id.split("/"))
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return folder


if __name__ == "__main__":
    hub = HubServer(sys.argv[1]).start()
    with open(sys.argv[2], "w") as f:
        f.write(hub.endpoint)
    threading.Event().wait()
