"""A local HTTP server for tests: serves a folder on 127.0.0.1 with Range support and injectable faults.

    from helpers_http import serve_directory

    with serve_directory(tmp_path / "mirror", fail_first=2) as server:
        download_source("ludb", server.url, dest)
        server.requests            # [(method, path, range header or None, status), ...]

``tests/`` is on ``sys.path`` while pytest runs (``tests/conftest.py`` is a rootdir conftest), so any test module
can import this helper. The stdlib ``SimpleHTTPRequestHandler`` has no Range support, which resume needs: the
handler below serves files itself (in the spirit of wfdb-python's ``tests/test_url.py``).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class MirrorServer(ThreadingHTTPServer):
    """Serves ``directory``; the attributes below inject faults (all off by default)."""

    daemon_threads = True

    def __init__(self, directory: Path, **options):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.directory = Path(directory).resolve()
        self.fail_first: int = options.pop("fail_first", 0)
        """Answer the first N matching GET requests with ``fail_status`` (then serve normally)."""
        self.fail_status: int = options.pop("fail_status", 503)
        self.fail_match: Callable[[str], bool] = options.pop("fail_match", lambda path: True)
        """Which request paths (relative, no leading slash) count towards ``fail_first``."""
        self.fail_headers: dict[str, str] = dict(options.pop("fail_headers", {}))
        """Extra headers on the injected failures (e.g. ``{"Retry-After": "1"}``)."""
        self.ignore_range: bool = options.pop("ignore_range", False)
        """Answer Range requests with the whole file (200), like servers without Range support."""
        self.truncate_once: dict[str, int] = dict(options.pop("truncate_once", {}))
        """``{path: n}``: the first GET of ``path`` announces the full length but sends n bytes, then hangs up."""
        # hostile modes
        self.trickle_once: dict[str, float] = dict(options.pop("trickle_once", {}))
        """``{path: seconds}``: the first GET of ``path`` sends one byte every ``seconds`` (a stalling server)."""
        self.endless: set[str] = set(options.pop("endless", ()))
        """Paths answered with an endless body of zeros and no Content-Length."""
        self.gzip: set[str] = set(options.pop("gzip", ()))
        """Paths answered gzip-compressed (``Content-Encoding: gzip``) whatever the client asked for."""
        self.redirect: dict[str, str] = dict(options.pop("redirect", {}))
        """``{path: target}``: GETs of ``path`` are answered 302 with ``Location: /<target>``."""
        if options:
            raise TypeError(f"unknown options {sorted(options)}")
        self.requests: list[tuple[str, str, str | None, int]] = []
        self.request_headers: list[tuple[str, dict[str, str]]] = []
        """``(path, headers)`` of every request, for checks on what the client asked for."""
        self._lock = threading.Lock()
        self._failed = 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def count(self, path: str, method: str = "GET") -> int:
        """How many requests for ``path`` (relative) were made."""
        with self._lock:
            return sum(1 for m, p, _, _ in self.requests if p == path and m == method)

    def _take_failure(self, path: str) -> bool:
        with self._lock:
            if self._failed < self.fail_first and self.fail_match(path):
                self._failed += 1
                return True
            return False

    def _take_truncation(self, path: str) -> int | None:
        with self._lock:
            return self.truncate_once.pop(path, None)

    def _take_trickle(self, path: str) -> float | None:
        with self._lock:
            return self.trickle_once.pop(path, None)

    def _log(self, method: str, path: str, rng: str | None, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, rng, status))


class _Handler(BaseHTTPRequestHandler):
    server: MirrorServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else small header + body writes wait ~40 ms for delayed ACKs

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _error(self, method: str, rel: str, rng: str | None, status: int, headers: dict | None = None) -> None:
        self.server._log(method, rel, rng, status)
        payload = f"{status}\n".encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method == "GET":
            self.wfile.write(payload)

    def _serve(self, body: bool) -> None:
        method = "GET" if body else "HEAD"
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        rng = self.headers.get("Range")
        with self.server._lock:
            self.server.request_headers.append((rel, dict(self.headers.items())))
        if body and self.server._take_failure(rel):
            return self._error(method, rel, rng, self.server.fail_status, self.server.fail_headers)
        if rel in self.server.redirect:
            return self._error(method, rel, rng, 302, {"Location": "/" + self.server.redirect[rel]})
        if rel in self.server.endless:
            return self._endless(method, rel, rng)
        path = (self.server.directory / rel).resolve()
        if not path.is_relative_to(self.server.directory) or not path.is_file():
            return self._error(method, rel, rng, 404)
        if rel in self.server.gzip:
            return self._gzip(method, rel, rng, path)
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        if rng and not self.server.ignore_range:
            m = _RANGE.match(rng.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                return self._error(method, rel, rng, 400)
            if m.group(1) == "":  # suffix range: last N bytes
                start = max(0, size - int(m.group(2)))
            else:
                start = int(m.group(1))
                if m.group(2):
                    end = min(end, int(m.group(2)))
            if start >= size:
                self.server._log(method, rel, rng, 416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        length = max(0, end - start + 1)
        self.server._log(method, rel, rng, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "none" if self.server.ignore_range else "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        cut = self.server._take_truncation(rel) if body else None
        trickle = self.server._take_trickle(rel) if body else None
        if cut is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not body:
            return
        with path.open("rb") as f:
            f.seek(start)
            remaining = length if cut is None else min(length, cut)
            while remaining > 0:
                if trickle is not None:
                    time.sleep(trickle)
                block = f.read(min(remaining, 1 if trickle is not None else 1 << 16))
                if not block:
                    break
                try:
                    self.wfile.write(block)
                    if trickle is not None:
                        self.wfile.flush()
                except OSError:  # the client gave up on us
                    return
                remaining -= len(block)
        if cut is not None:
            self.wfile.flush()
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)


    def _endless(self, method: str, rel: str, rng: str | None) -> None:
        self.server._log(method, rel, rng, 200)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        if method != "GET":
            return
        block = bytes(1 << 16)
        with contextlib.suppress(OSError):
            for _ in range(1 << 14):  # 1 GiB at most, should the client never stop reading
                self.wfile.write(block)

    def _gzip(self, method: str, rel: str, rng: str | None, path: Path) -> None:
        payload = gzip.compress(path.read_bytes())
        self.server._log(method, rel, rng, 200)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method == "GET":
            self.wfile.write(payload)


@contextlib.contextmanager
def serve_directory(directory: str | os.PathLike, **options) -> Iterator[MirrorServer]:
    """Serve ``directory`` on ``http://127.0.0.1:<free port>/`` for the duration of the block.

    Options: ``fail_first``, ``fail_status``, ``fail_match``, ``fail_headers``, ``ignore_range``, ``truncate_once``
    and the hostile modes ``trickle_once``, ``endless``, ``gzip``, ``redirect`` (see :class:`MirrorServer`).
    """
    server = MirrorServer(Path(directory), **options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def copy_mirror_subset(
    mirror: str | os.PathLike, dest: str | os.PathLike, slug_version: str, records: list[str],
    extra_files: tuple[str, ...] = (),
) -> Path:
    """Copy ``records`` (every file ``<record>.<ext>``) and ``extra_files`` of ``mirror/<slug>/<version>`` into
    ``dest/<slug>/<version>`` with a RECORDS and SHA256SUMS.txt for just that subset (checksums taken from the
    original listing, so they are the published ones). Returns ``dest`` (the new mirror's base folder).
    """
    import shutil

    src_root = Path(mirror) / slug_version
    out_root = Path(dest) / slug_version
    sums = {}
    for line in (src_root / "SHA256SUMS.txt").read_text().splitlines():
        digest, path = line.split(" ", 1)
        sums[path] = digest
    wanted = [p for p in sums if any(p.startswith(r + ".") and "/" not in p[len(r):] for r in records)]
    wanted += list(extra_files)
    lines = []
    for rel in wanted:
        (out_root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_root / rel, out_root / rel)
        lines.append(f"{sums[rel]} {rel}")
    write_listing(out_root, records, lines)
    return Path(dest)


def write_listing(root: Path, records: list[str], checksum_lines: list[str]) -> None:
    """Write ``root/RECORDS`` and ``root/SHA256SUMS.txt`` (with RECORDS' own checksum first, as PhysioNet does)."""
    import hashlib

    records_bytes = "".join(f"{r}\n" for r in records).encode()
    (root / "RECORDS").write_bytes(records_bytes)
    listing = [f"{hashlib.sha256(records_bytes).hexdigest()} RECORDS", *checksum_lines]
    (root / "SHA256SUMS.txt").write_text("".join(f"{line}\n" for line in listing))
