"""Checks of a command's arguments that run before any orchestration or tracking starts.

Each raises :class:`ecgmodel.errors.UserError` naming the argument, the rule and the ``ecgssl`` command that
fixes it, within milliseconds (a mirror check: one request), so a typo costs no Prefect server start-up, no
MLflow run and no traceback. The flows repeat the library's own checks; these only move the failure earlier.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ecgmodel.errors import UserError

#: Magic bytes of the files ``torch.save`` writes (a zip archive); anything else is not a checkpoint.
_ZIP_MAGIC = b"PK\x03\x04"


def check_store_readable(store: str | Path, command: str, need_rows: bool = True) -> None:
    """``store`` is a committed ecgssl store (with rows when ``need_rows``); else a UserError with the fix."""
    from ecgmodel.data.store import open_store

    s = open_store(store)  # StoreError is a UserError: missing, a file, lost commit (--recover), old schema
    if need_rows and s.n == 0:
        raise UserError(f"store {store} holds no windows: nothing to {command} on",
                        f"ecgssl ingest --store {store} --source ptb-xl")  # fmt: skip


def check_store_writable(store: str | Path) -> None:
    """``store`` can be created or extended: a folder (not a file), a store or empty, on a writable disk."""
    from ecgmodel.data.store import MANIFEST, PREV_MANIFEST, open_store

    path = Path(store)
    if path.exists() and not path.is_dir():
        raise UserError(f"--store {store}: is a file; a store is a folder",
                        f"give a folder path, e.g. ecgssl ingest --store {path.with_suffix('.zarr')} ...")  # fmt: skip
    if (path / MANIFEST).exists():
        open_store(path)  # readable (schema, lengths): else the StoreError names the fix
    elif path.is_dir() and (path / PREV_MANIFEST).exists():
        raise UserError(f"--store {store}: the last commit (commit.json) is lost; refusing to write over it",
                        f"ecgssl inspect {store} --recover")  # fmt: skip
    elif path.is_dir() and any(not p.name.startswith(".") for p in path.iterdir()):
        raise UserError(f"--store {store}: folder exists, is not empty and is not an ecgssl store",
                        f"choose a new folder: ecgssl ingest --store {path}-new ...")  # fmt: skip
    check_writable_dir(path, "--store")


def check_writable_dir(path: str | Path, flag: str, command: str = "ingest") -> None:
    """The nearest existing folder at or above ``path`` is writable (else: a read-only disk or no permission)."""
    here = Path(path).absolute()
    while not here.exists():
        here = here.parent
    fix = f"ecgssl {command} ... {flag} WRITABLE_DIR" if flag.startswith("--") else \
        f"ecgssl {command} ... --set {flag}=WRITABLE_DIR"
    if here.is_file():
        raise UserError(f"{flag} {path}: {here} is a file, not a folder", fix)
    if not os.access(here, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {here} is not writable (read-only disk or no permission)", fix)


def check_sources(sources: Iterable[str], flag: str = "--source") -> None:
    """Every slug names a catalog source."""
    from ecgmodel.data.sources import UnknownSourceError, get_source

    for slug in sources:
        try:
            get_source(slug)
        except UnknownSourceError as exc:
            raise UserError(f"{flag} {slug}: {exc}", "ecgssl ingest --source ptb-xl ...") from None


def check_mirror(mirror: str, sources: Iterable[str], timeout: float = 10.0) -> None:
    """A local mirror holds ``<slug>/<version>/SHA256SUMS.txt`` for every source; a remote one answers."""
    from ecgmodel.data.sources import get_source

    text = str(mirror)
    if text.startswith(("http://", "https://")):
        import requests

        slug = next(iter(sources), None)
        url = text.rstrip("/") + "/" + (f"{slug}/{get_source(slug).version}/SHA256SUMS.txt" if slug else "")
        try:
            requests.head(url, timeout=timeout, allow_redirects=True)
        except requests.RequestException as exc:
            raise UserError(f"--mirror {text}: unreachable ({type(exc).__name__})",
                            "check the network, or use a local copy: ecgssl ingest --mirror DIR ...") from None
        return
    root = Path(text.removeprefix("file://"))
    if not root.is_dir():
        raise UserError(f"--mirror {text}: no such folder", "give a PhysioNet-shaped folder or URL: ecgssl ingest "
                        "--mirror https://physionet.org/files/ ...")  # fmt: skip
    for slug in sources:
        rel = f"{slug}/{get_source(slug).version}/SHA256SUMS.txt"
        if not (root / rel).is_file():
            raise UserError(f"--mirror {text}: has no {rel} (a mirror holds <slug>/<version>/SHA256SUMS.txt)",
                            f"leave the source out, or point at a mirror that has it: ecgssl ingest --mirror DIR "
                            f"--source {slug}")  # fmt: skip


def check_fraction(value: float, flag: str = "--fraction", command: str = "finetune") -> None:
    if not 0.0 < float(value) <= 1.0:
        raise UserError(f"{flag} {value}: must be in (0, 1] (a fraction of the labelled training records)",
                        f"ecgssl {command} ... {flag} 0.1")  # fmt: skip


def check_encoder_file(ref: str | Path, flag: str = "--init") -> None:
    """When ``ref`` is a local path: it is an ecgssl encoder or pretraining checkpoint (read safely, weights only).

    Registry and run references (``models:/``, ``runs:/``, run ids) are left to the flow, which resolves them.
    """
    text = str(ref)
    if text in ("random", "supervised") or text.startswith(("models:/", "runs:/")):
        return
    path = Path(text)
    if not path.exists():
        if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
            return  # an MLflow run id
        raise UserError(f"{flag} {text}: no such file, and not a run id, runs:/ or models:/ URI",
                        f"ecgssl pretrain --store STORE --out DIR, then {flag} DIR/encoder.pt")  # fmt: skip
    from ecgmodel.train.checkpoint import _find_file

    try:
        file = _find_file(path)
    except FileNotFoundError as exc:
        raise UserError(f"{flag} {text}: {exc}", f"{flag} {path}/encoder.pt (written by ecgssl pretrain)") from None
    fix = f"give an encoder written by ecgssl pretrain ({flag} DIR/encoder.pt), or retrain: ecgssl pretrain ..."
    with open(file, "rb") as fh:
        magic = fh.read(4)
    if magic != _ZIP_MAGIC:
        raise UserError(f"{flag} {file}: not a checkpoint of this project (not a torch file)", fix)
    import torch

    from ecgmodel.train.checkpoint import CHECKPOINT_FORMAT, ENCODER_FORMAT

    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickled objects that weights_only refuses, ...
        raise UserError(f"{flag} {file}: not a checkpoint of this project (unreadable: {type(exc).__name__})",
                        fix) from None
    if not (isinstance(obj, dict) and obj.get("format") in (CHECKPOINT_FORMAT, ENCODER_FORMAT)):
        raise UserError(f"{flag} {file}: a torch file, but not an ecgssl encoder or pretraining checkpoint", fix)


def check_overrides(build: Callable[[], Any], flag: str, example: str) -> Any:
    """Run ``build`` (a config builder applying ``--set`` pairs); a bad key or value becomes a UserError."""
    from pydantic import ValidationError

    try:
        return build()
    except (KeyError, ValueError, TypeError, ValidationError) as exc:
        if isinstance(exc, ValidationError):  # "ablation.fractions: Value error, fractions must be ..."
            text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        else:
            text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        problem = " ".join(str(text).split())[:400]
        raise UserError(f"{flag}: {problem}", example) from None
