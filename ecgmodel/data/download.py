"""Checksum-verified, resumable download of a catalog source from PhysioNet or any mirror laid out like it.

    >>> from ecgmodel.data.sources import get_source
    >>> result = download_source(get_source("ludb"), "https://physionet.org/files/", Path("data/raw"))
    >>> result.root, len(result.records), result.failures          # doctest: +SKIP
    (PosixPath('data/raw/ludb/1.0.1'), 200, [])

What it does, for ``<mirror>/<slug>/<version>/``:

1. fetch ``RECORDS`` and ``SHA256SUMS.txt`` (:class:`SourceUnavailableError` if either cannot be fetched) and
   check every name in both against the path-safety rules (:class:`UnsafePathError`, before anything is written);
2. select the records the source ingests (:meth:`Source.record_paths`, optionally limited by ``records``) and
   their files: every SHA256SUMS entry named ``<record>.<ext>``, plus the source's metadata files;
3. download each file into ``<dest>/<slug>/<version>/<path>.part`` (resuming a partial ``.part`` with an HTTP
   Range request), verify its sha256, then atomically rename it into place; files already present and verified
   are skipped (a small JSON manifest caches verification by size + mtime);
4. report a record whose files cannot all be fetched and verified, or whose header names a file without a
   checksum, as a failure ``{"record", "reason"}`` and carry on with the others.

A local mirror (a folder) is verified in place with ``in_place=True``: every file's sha256 is checked where it
lies and the result's ``root`` is the mirror's ``<slug>/<version>/`` folder; only the small listings, the
verification cache and the verified-record list go to ``<dest>/<slug>/<version>/`` (nothing is copied, and the
mirror may be read-only). A file whose checksum does not match is a failure of its record, as in a download.

wfdb's ``dl_database`` is not used: it verifies nothing, cannot resume, and fetches some files twice at once.
The retry loop is our own because one attempt spans request, resumed body and checksum, which urllib3's
``Retry`` (request-level only) does not cover.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import random
import re
import threading
import time
import unicodedata
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import requests
import urllib3
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from ecgmodel.data.sources import DEFAULT_MIRROR, Source, get_source

PHYSIONET_URL = DEFAULT_MIRROR
MANIFEST_NAME = ".ecgssl-manifest.json"
LOCK_NAME = ".ecgssl-download.lock"
VERIFIED_RECORDS_NAME = ".ecgssl-records.txt"
CHECKSUMS_NAME = "SHA256SUMS.txt"
RECORDS_NAME = "RECORDS"
PART_SUFFIX = ".part"
_RESERVED = {MANIFEST_NAME, LOCK_NAME, VERIFIED_RECORDS_NAME}
_CHUNK = 1 << 16
MAX_RETRY_AFTER = 60.0
MAX_FILE_BYTES = 4 << 30  # no file of a catalogued source comes near this; a server sending more is refused
ATTEMPT_TIMEOUT = 600.0  # wall-clock seconds one attempt at one file may take (a trickling server is cut off)
LOCK_TIMEOUT = 600.0  # seconds to wait for another download of the same source folder
# Unicode categories refused in listed names: control characters (C0, DEL, C1), format characters (bidi
# overrides and isolates, zero-width characters, BOM), surrogates, line and paragraph separators. They could
# make a logged name read differently from the file it names.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_SHA256_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *]?(.+)$")
_DRIVE = re.compile(r"^[A-Za-z]:")


class SourceUnavailableError(RuntimeError):
    """The source's RECORDS or SHA256SUMS.txt could not be fetched (or is unusable); names the URL."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot fetch {url}: {reason}")
        self.url = url
        self.reason = reason


class UnsafePathError(ValueError):
    """A name in RECORDS or SHA256SUMS.txt that would be written outside the destination folder."""

    def __init__(self, listing: str, entry: str, rule: str):
        super().__init__(f"refusing unsafe path {entry!r} listed in {listing}: {rule}")
        self.listing = listing
        self.entry = entry
        self.rule = rule


class _Refused(Exception):
    """The server's answer breaks a rule no retry can fix (too large, compressed): the file fails at once."""


class _NotFound(Exception):
    """The file does not exist on the mirror (HTTP 404/410, missing local file): never retried."""


class _Transient(Exception):
    """A failure worth retrying: connection error, timeout, 5xx, 429, cut-off body, checksum mismatch."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class DownloadResult:
    """What :func:`download_source` left on disk."""

    root: Path
    """``<dest>/<slug>/<version>``: the mirror's layout below it."""
    records: list[str]
    """Record paths (as in RECORDS) whose files are all present and verified, in RECORDS order."""
    failures: list[dict[str, str]] = field(default_factory=list)
    """``{"record": path, "reason": ...}`` for each record (or metadata file) left out."""
    files_downloaded: int = 0
    """Files fetched in this run (and verified)."""
    files_skipped: int = 0
    """Files already present and verified (no transfer)."""
    bytes_downloaded: int = 0
    """Bytes transferred in this run (resumed files count only the part fetched now)."""
    metadata_files: list[str] = field(default_factory=list)
    """Metadata files (label tables, licence) present and verified."""
    records_file: Path | None = None
    """Text file listing :attr:`records`, one per line (for readers that should not re-list the folder)."""

    def summary(self) -> dict:
        """A small JSON-able record for logs and orchestrators."""
        return {
            "root": str(self.root),
            "n_records": len(self.records),
            "records_file": str(self.records_file) if self.records_file else None,
            "failures": list(self.failures),
            "metadata_files": list(self.metadata_files),
            "files_downloaded": self.files_downloaded,
            "files_skipped": self.files_skipped,
            "bytes_downloaded": self.bytes_downloaded,
        }


# ---------------------------------------------------------------------------------------------- path safety
def check_relpath(entry: str, listing: str) -> str:
    """Return ``entry`` if it is a safe relative POSIX path below the source root, else raise UnsafePathError.

    Refused: empty names, absolute paths, ``..`` or ``.`` or empty components, backslashes, drive letters,
    NUL and other control characters (C0, DEL and C1), bidi overrides and other invisible formatting characters,
    and names reserved for our own bookkeeping files.
    """
    if not entry:
        raise UnsafePathError(listing, entry, "empty name")
    if "\x00" in entry:
        raise UnsafePathError(listing, entry, "contains NUL")
    if any(ord(c) < 32 or ord(c) == 127 for c in entry):
        raise UnsafePathError(listing, entry, "contains a control character")
    odd = [c for c in entry if unicodedata.category(c) in _UNSAFE_CATEGORIES]
    if odd:
        raise UnsafePathError(listing, entry, f"contains a control or formatting character (U+{ord(odd[0]):04X})")
    if "\\" in entry:
        raise UnsafePathError(listing, entry, "contains a backslash")
    if entry.startswith("/"):
        raise UnsafePathError(listing, entry, "absolute path")
    if _DRIVE.match(entry):
        raise UnsafePathError(listing, entry, "starts with a drive letter")
    parts = entry.split("/")
    if any(p == ".." for p in parts):
        raise UnsafePathError(listing, entry, "contains '..'")
    if any(p in ("", ".") for p in parts):
        raise UnsafePathError(listing, entry, "contains an empty or '.' component")
    if parts[-1] in _RESERVED or parts[-1].endswith(PART_SUFFIX):
        raise UnsafePathError(listing, entry, "uses a name reserved for the downloader's own files")
    return entry


def _target(root: Path, rel: str, listing: str) -> Path:
    """``root / rel``, refusing anything that resolves (e.g. through a symlink) outside ``root``."""
    path = root / PurePosixPath(rel)
    if not path.resolve().is_relative_to(root.resolve()):
        raise UnsafePathError(listing, rel, f"resolves outside {root}")
    return path


def parse_checksums(text: str, listing: str = CHECKSUMS_NAME) -> dict[str, str]:
    """``{path: sha256}`` from a ``sha256sum``-style listing (``<hex> <path>``, also ``<hex>  <path>``/``*``)."""
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _SHA256_LINE.match(line.strip())
        if not m:
            raise ValueError(f"{listing} line {lineno}: expected '<sha256> <path>', got {line!r}")
        digest, path = m.group(1).lower(), m.group(2)
        check_relpath(path, listing)
        if path in out and out[path] != digest:
            raise ValueError(f"{listing} line {lineno}: {path!r} listed twice with different checksums")
        out[path] = digest
    return out


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None when unusable.

    Anything else (``"²"``, ``"-1"``, ``"nan"``, garbage) is ignored rather than trusted or raised.
    """
    text = (value or "").strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, delay) if math.isfinite(delay) else None


def decode_listing(data: bytes) -> str:
    """A listing's text: UTF-8, with a leading byte-order mark dropped."""
    return data.decode("utf-8-sig")


def header_data_files(header_text: str) -> list[str]:
    """File names a single-segment WFDB header says hold its signals (``~`` = no file).

    Hand-parsed because ``wfdb.rdheader`` refuses several real headers as they are (the Georgia headers name
    the record ``E00009.mat``); only the first token of each signal line is needed here.
    """
    lines = [ln.strip() for ln in header_text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError("empty header")
    record_line = lines[0].split()
    if len(record_line) < 2 or "/" in record_line[0]:  # multi-segment: segments are records of their own
        return []
    nsig = int(record_line[1])
    names = []
    for ln in lines[1 : 1 + nsig]:
        name = ln.split()[0]
        if name != "~" and name not in names:
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------------- mirrors
class _Mirror:
    """Where files come from: an http(s) base URL or a local folder (path or file:// URL)."""

    def __init__(
        self,
        mirror: str | os.PathLike,
        source: Source,
        timeout: float | tuple[float, float],
        max_file_bytes: int = MAX_FILE_BYTES,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
    ):
        text = os.fspath(mirror)
        parsed = urllib.parse.urlparse(text)
        self.timeout = timeout
        self.max_file_bytes = max_file_bytes
        self.attempt_timeout = attempt_timeout
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        if parsed.scheme in ("http", "https"):
            self.base: str | Path = source.base_url(text)
        elif parsed.scheme == "file":
            self.base = Path(urllib.request.url2pathname(parsed.path)) / source.slug / source.version
        elif parsed.scheme and len(parsed.scheme) > 1:  # 'c:' is a drive letter, not a scheme
            raise ValueError(f"mirror {text!r}: unsupported scheme {parsed.scheme!r} (use http(s)://, file:// or a path)")
        else:
            self.base = Path(text).expanduser() / source.slug / source.version

    @property
    def is_http(self) -> bool:
        return isinstance(self.base, str)

    def url(self, rel: str) -> str:
        return self.base + urllib.parse.quote(rel) if self.is_http else str(self.base / rel)

    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = "ecgssl-downloader"
            # bytes as stored: a compressed body would not match the checksums' offsets for Range resumes and
            # could expand without bound
            s.headers["Accept-Encoding"] = "identity"
            self._local.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    def close(self) -> None:
        with self._lock:
            for s in self._sessions:
                s.close()
            self._sessions.clear()

    def _check_status(self, resp: requests.Response, url: str) -> None:
        if resp.status_code in (404, 410):
            raise _NotFound(f"HTTP {resp.status_code} for {url}")
        if resp.status_code in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {resp.status_code} for {url}", parse_retry_after(resp.headers.get("Retry-After")))
        if resp.status_code >= 400:
            raise _NotFound(f"HTTP {resp.status_code} for {url}")
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _Refused(f"{url}: the server sent a {encoding!r}-encoded body although identity was asked for")
        length = resp.headers.get("Content-Length", "")
        if length.isascii() and length.isdigit() and int(length) > self.max_file_bytes:
            raise _Refused(f"{url}: {int(length)} bytes announced, more than the {self.max_file_bytes}-byte cap")

    def _body(self, resp: requests.Response, url: str, already: int):
        """The body in blocks as they arrive, cut off past the size cap or the attempt's wall-clock deadline.

        ``read1`` returns whatever has arrived (``iter_content`` would wait for a whole block, so a server
        trickling a byte at a time could stall an attempt for hours without tripping the read timeout).
        """
        deadline = time.monotonic() + self.attempt_timeout
        total = already
        while True:
            try:
                block = resp.raw.read1(_CHUNK, decode_content=False)
            except urllib3.exceptions.HTTPError as e:  # cut off, timed out: what arrived is kept for a resume
                raise _Transient(f"{type(e).__name__} for {url}: {e}") from e
            if not block:
                return
            total += len(block)
            if total > self.max_file_bytes:
                raise _Refused(f"{url}: more than the {self.max_file_bytes}-byte cap")
            yield block
            if time.monotonic() > deadline:
                raise _Transient(f"{url}: attempt took longer than {self.attempt_timeout:g} s (slow server)")

    def read_bytes(self, rel: str) -> bytes:
        url = self.url(rel)
        if not self.is_http:
            try:
                return Path(url).read_bytes()
            except FileNotFoundError as e:
                raise _NotFound(f"no such file {url}") from e
            except OSError as e:  # a folder where a file belongs, no permission, ...
                raise _NotFound(f"{url} is not a readable file ({type(e).__name__}: {e.strerror or e})") from e
        try:
            with self.session().get(url, timeout=self.timeout, stream=True) as resp:
                self._check_status(resp, url)
                return b"".join(self._body(resp, url, 0))
        except requests.RequestException as e:
            raise _Transient(f"{type(e).__name__} for {url}: {e}") from e

    def fetch_into(self, rel: str, part: Path, expected_sha: str) -> int:
        """Append the rest of ``rel`` to ``part`` (Range from its current size), verify, return bytes fetched."""
        url = self.url(rel)
        offset = part.stat().st_size if part.exists() else 0
        sha = hashlib.sha256()
        if offset:
            with part.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
        fetched = 0
        if not self.is_http:
            try:
                with open(url, "rb") as src, part.open("ab") as out:
                    if offset > os.fstat(src.fileno()).st_size:  # stale, longer than the file: start over
                        raise _Transient(f"partial file {part} is longer than {url}")
                    src.seek(offset)
                    for block in iter(lambda: src.read(_CHUNK), b""):
                        out.write(block)
                        sha.update(block)
                        fetched += len(block)
            except FileNotFoundError as e:
                raise _NotFound(f"no such file {url}") from e
            except IsADirectoryError as e:
                raise _NotFound(f"{url} is a folder, not a file") from e
            except _Transient:
                part.unlink(missing_ok=True)
                raise
        else:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                with self.session().get(url, headers=headers, stream=True, timeout=self.timeout) as resp:
                    if resp.status_code == 416 and offset:
                        pass  # the .part already holds every byte (or more): the checksum below decides
                    else:
                        self._check_status(resp, url)
                        mode = "ab"
                        if offset and resp.status_code != 206:  # server ignored Range: restart cleanly
                            mode, sha, offset = "wb", hashlib.sha256(), 0
                        elif offset and not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                            part.unlink(missing_ok=True)
                            raise _Transient(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
                        with part.open(mode) as out:
                            for block in self._body(resp, url, offset):
                                out.write(block)
                                sha.update(block)
                                fetched += len(block)
            except _Refused:
                part.unlink(missing_ok=True)
                raise
            except requests.RequestException as e:  # includes bodies cut short: the .part keeps what arrived
                raise _Transient(f"{type(e).__name__} for {url}: {e}") from e
        if sha.hexdigest() != expected_sha:
            part.unlink(missing_ok=True)
            raise _Transient(f"sha256 mismatch for {rel} (expected {expected_sha}, got {sha.hexdigest()})")
        return fetched


def _with_retries(fn: Callable, retries: int, backoff: float):
    """Call ``fn`` until it succeeds, retrying transient errors ``retries`` times with exponential backoff
    (with jitter, so that parallel workers do not retry in lock-step; a server's Retry-After is honoured up to
    ``MAX_RETRY_AFTER`` seconds)."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except _Transient as e:
            if attempt == retries:
                raise
            delay = backoff * (2**attempt) * (1 + 0.25 * random.random())
            if e.retry_after is not None:
                delay = max(delay, min(e.retry_after, MAX_RETRY_AFTER))
            time.sleep(delay)


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


# ---------------------------------------------------------------------------------------------- manifest
def _load_manifest(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
        files = data.get("files", {}) if isinstance(data, dict) else {}
        return files if isinstance(files, dict) else {}
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a missing or damaged cache only costs re-hashing


def _save_manifest(path: Path, files: dict[str, dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "files": files}, sort_keys=True))
    os.replace(tmp, path)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PART_SUFFIX)
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- main entry
def _select(all_records: list[str], records, slug: str) -> list[str]:
    if records is None:
        return all_records
    if isinstance(records, int) and not isinstance(records, bool):
        if records < 0:
            raise ValueError(f"records={records}: a limit must be >= 0")
        return all_records[:records]
    if callable(records):
        return [r for r in all_records if records(r)]
    wanted = [records] if isinstance(records, str) else list(records)
    known = set(all_records)
    unknown = [r for r in wanted if r not in known]
    if unknown:
        raise ValueError(
            f"{slug}: {len(unknown)} requested record(s) are not among the source's selected RECORDS entries, "
            f"e.g. {unknown[:3]}"
        )
    wanted_set = set(wanted)
    return [r for r in all_records if r in wanted_set]


def _record_files(records: list[str], checksums: dict[str, str]) -> dict[str, list[str]]:
    """``{record: [record.ext, ...]}``: every checksum entry named ``<record>.<ext>`` (ext without '/')."""
    wanted = set(records)
    out: dict[str, list[str]] = {r: [] for r in records}
    for path in checksums:
        name_start = path.rfind("/") + 1
        # A record name may itself contain dots: try every dot of the file name as the record/ext boundary.
        for i in range(name_start, len(path)):
            if path[i] == "." and path[:i] in wanted:
                out[path[:i]].append(path)
    return out


def download_source(
    source: Source | str,
    mirror: str | os.PathLike = PHYSIONET_URL,
    dest: str | os.PathLike = Path("data/raw"),
    *,
    workers: int = 4,
    records: int | Collection[str] | Callable[[str], bool] | None = None,
    progress: bool = True,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float | tuple[float, float] = (10.0, 60.0),
    max_file_bytes: int = MAX_FILE_BYTES,
    attempt_timeout: float = ATTEMPT_TIMEOUT,
    lock_timeout: float = LOCK_TIMEOUT,
    in_place: bool = False,
) -> DownloadResult:
    """Download ``source`` from ``mirror`` into ``dest/<slug>/<version>/`` and verify every file's sha256.

    Args:
        source: a catalog :class:`Source` (or its slug); its ``selected_groups`` decide which records.
        mirror: PhysioNet-style base: ``https://physionet.org/files/``, any http(s) URL, a folder, or file://.
        dest: folder that receives ``<slug>/<version>/...``.
        workers: files fetched at once (one requests.Session per thread).
        records: ``None`` = all selected records; an int = the first N; a collection of record paths; or a
            predicate on the record path.
        progress: show a tqdm bar (files).
        retries: extra attempts per file on transient errors (connection, timeout, 5xx, 429, cut-off body,
            checksum mismatch); 404 is final at once.
        backoff: first retry delay in seconds, doubled each attempt.
        timeout: requests timeout (connect, read) in seconds.
        max_file_bytes: a file larger than this is refused (announced or received), not retried.
        attempt_timeout: wall-clock seconds one attempt at one file may take (the rest resumes on a retry).
        lock_timeout: seconds to wait for another download into the same folder.
        in_place: with a local mirror, verify the files where they lie instead of copying them into ``dest``
            (ignored for an http(s) mirror).

    Raises:
        SourceUnavailableError: RECORDS or SHA256SUMS.txt could not be fetched, is unusable, or does not match
            the catalog's pinned ``checksums_sha256`` (a tampered mirror); or the folder stays locked.
        UnsafePathError: a name in either listing could escape the destination (nothing is written).
    """
    src = get_source(source) if isinstance(source, str) else source
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    root = Path(dest) / src.slug / src.version
    mir = _Mirror(mirror, src, timeout, max_file_bytes, attempt_timeout)
    try:
        # 1. the two listings; nothing is written until both passed the path checks
        raw: dict[str, bytes] = {}
        for name in (RECORDS_NAME, CHECKSUMS_NAME):
            try:
                raw[name] = _with_retries(lambda name=name: mir.read_bytes(name), retries, backoff)
            except (_NotFound, _Transient, _Refused) as e:
                raise SourceUnavailableError(mir.url(name), str(e)) from e
        pinned = src.checksums_sha256
        if pinned and hashlib.sha256(raw[CHECKSUMS_NAME]).hexdigest() != pinned:
            raise SourceUnavailableError(
                mir.url(CHECKSUMS_NAME), f"sha256 {hashlib.sha256(raw[CHECKSUMS_NAME]).hexdigest()} is not the "
                f"one pinned for {src.slug} {src.version} ({pinned}): refusing a listing that differs from the "
                "published one (tampered or incomplete mirror)",
            )
        try:
            records_text = decode_listing(raw[RECORDS_NAME])
            checksums = parse_checksums(decode_listing(raw[CHECKSUMS_NAME]), mir.url(CHECKSUMS_NAME))
        except (UnicodeDecodeError, ValueError) as e:
            if isinstance(e, UnsafePathError):
                raise
            raise SourceUnavailableError(mir.url(CHECKSUMS_NAME), f"unusable listing: {e}") from e
        records_url = mir.url(RECORDS_NAME)
        for line in records_text.splitlines():
            if line.strip() and not line.strip().startswith("#"):
                check_relpath(line.strip().rstrip("/"), records_url)
        listed_sha = checksums.get(RECORDS_NAME)
        if listed_sha and hashlib.sha256(raw[RECORDS_NAME]).hexdigest() != listed_sha:
            raise SourceUnavailableError(records_url, "RECORDS does not match its SHA256SUMS.txt entry")

        selected = _select(src.record_paths(records_text), records, src.slug)
        files_of = _record_files(selected, checksums)

        root.mkdir(parents=True, exist_ok=True)
        files_root = mir.base if in_place and not mir.is_http else root
        # Paths are checked again against the real folder (symlinks) before anything is written or read.
        for rel in {p for files in files_of.values() for p in files} | set(src.metadata_files):
            _target(files_root, rel, mir.url(CHECKSUMS_NAME))

        try:
            lock = FileLock(str(root / LOCK_NAME), timeout=lock_timeout)
            lock.acquire()
        except Timeout as e:
            raise SourceUnavailableError(str(root), f"another download holds {LOCK_NAME} for more than "
                                         f"{lock_timeout:g} s") from e  # fmt: skip
        try:
            return _download_locked(src, mir, root, raw, checksums, selected, files_of, workers, progress,
                                    retries, backoff, files_root)  # fmt: skip
        finally:
            lock.release()
    finally:
        mir.close()


def _download_locked(src, mir, root, raw, checksums, selected, files_of, workers, progress, retries, backoff,
                     files_root=None):  # fmt: skip
    """``root``: where the listings and caches go; ``files_root``: where the files are (``root`` unless a local
    mirror is verified in place)."""
    files_root = files_root or root
    in_place = files_root != root
    result = DownloadResult(root=files_root, records=[])
    manifest_path = root / MANIFEST_NAME
    manifest = _load_manifest(manifest_path)
    for name in (RECORDS_NAME, CHECKSUMS_NAME):
        _write_atomic(root / name, raw[name])

    failures: dict[str, list[str]] = {}
    for rec, files in files_of.items():
        if f"{rec}.hea" not in files:
            failures.setdefault(rec, []).append(f"no checksum entry for {rec}.hea in {CHECKSUMS_NAME}")
    meta_missing = [m for m in src.metadata_files if m not in checksums]
    for m in meta_missing:
        result.failures.append({"record": m, "reason": f"metadata file has no checksum entry in {CHECKSUMS_NAME}"})

    jobs: dict[str, str] = {}  # rel -> sha, each file once
    for rec, files in files_of.items():
        if rec not in failures:
            jobs.update({p: checksums[p] for p in files})
    jobs.update({m: checksums[m] for m in src.metadata_files if m in checksums})

    def cached(rel: str, sha: str) -> bool:
        """Verified before, and unchanged since (same size and mtime as when it was verified)."""
        entry = manifest.get(rel)
        try:
            st = (files_root / rel).stat()
        except OSError:
            return False
        return bool(entry) and entry.get("sha256") == sha and entry.get("size") == st.st_size \
            and entry.get("mtime_ns") == st.st_mtime_ns

    def fetch(rel: str, sha: str) -> tuple[str, int, dict]:
        path = _target(files_root, rel, mir.url(CHECKSUMS_NAME))
        if path.is_file():
            st = path.stat()
            if _sha256_file(path) == sha:
                return "skipped", 0, {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if in_place:  # nothing to fetch from: the mirror's own file is missing or differs
            raise _NotFound(f"{path}: " + ("sha256 differs from SHA256SUMS.txt" if path.is_file() else "missing"))
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + PART_SUFFIX)
        nbytes = _with_retries(lambda: mir.fetch_into(rel, part, sha), retries, backoff)
        os.replace(part, path)
        st = path.stat()
        return "downloaded", nbytes, {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    file_errors: dict[str, str] = {}
    last_save = time.monotonic()
    bar = tqdm(total=len(jobs), unit="file", desc=f"{src.slug} {src.version}", disable=not progress)
    todo = {}
    for rel, sha in jobs.items():  # a stat per file, no thread needed: re-runs stay fast
        if cached(rel, sha):
            result.files_skipped += 1
            bar.update(1)
        else:
            todo[rel] = sha
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(fetch, rel, sha): rel for rel, sha in todo.items()}
        try:
            for fut in as_completed(futures):
                rel = futures[fut]
                try:
                    status, nbytes, entry = fut.result()
                except (_NotFound, _Transient, _Refused, OSError) as e:
                    file_errors[rel] = str(e)
                    manifest.pop(rel, None)
                else:
                    manifest[rel] = entry
                    if status == "skipped":
                        result.files_skipped += 1
                    else:
                        result.files_downloaded += 1
                        result.bytes_downloaded += nbytes
                bar.update(1)
                if time.monotonic() - last_save > 5:  # an interrupted run keeps most of its verification cache
                    _save_manifest(manifest_path, manifest)
                    last_save = time.monotonic()
        finally:
            for f in futures:
                f.cancel()
            bar.close()
            _save_manifest(manifest_path, manifest)

    for rec in selected:
        reasons = failures.setdefault(rec, [])
        reasons += [f"{rel}: {file_errors[rel]}" for rel in files_of[rec] if rel in file_errors]
        if reasons:
            continue
        try:  # every file the header names must be one we verified
            header = (files_root / f"{rec}.hea").read_text(encoding="utf-8", errors="replace")
            folder = rec.rsplit("/", 1)[0] + "/" if "/" in rec else ""
            for name in header_data_files(header):
                if f"{folder}{name}" not in files_of[rec]:
                    reasons.append(f"header names {folder}{name}, which has no checksum entry in {CHECKSUMS_NAME}")
        except (ValueError, IndexError) as e:
            reasons.append(f"unreadable header {rec}.hea: {e}")
    for rec in selected:
        if failures[rec]:
            result.failures.append({"record": rec, "reason": "; ".join(failures[rec])})
        else:
            result.records.append(rec)
    for m in src.metadata_files:
        if m in jobs:
            if m in file_errors:
                result.failures.append({"record": m, "reason": f"metadata file: {file_errors[m]}"})
            else:
                result.metadata_files.append(m)

    result.records_file = root / VERIFIED_RECORDS_NAME
    _write_atomic(result.records_file, "".join(f"{r}\n" for r in result.records).encode())
    return result
