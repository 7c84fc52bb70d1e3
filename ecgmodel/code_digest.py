"""A digest of the code a computation runs, so that caches and finished runs know when the code changed.

:func:`code_digest` is a sha256 over the sorted ``.py`` files (path relative to their package, then content) of
the project's packages (``ecgmodel``, ``flows``, ``tasks``) plus the tables the library reads at run time
(``ecgmodel/aux_data/*.csv``: label mappings and metric weights change results too).

Why a content hash rather than "package version + git commit": the commit does not move when a file is edited
without committing (a working tree under development, a patched install), which is exactly when a stale cache
would hand back results of the old code; and an installed copy has no ``.git`` at all. Hashing the ~1 MB of
source costs a few milliseconds and changes with every edit that can change a result. The price: a change to a
comment or docstring also invalidates the caches (harmless: the stage recomputes once).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The packages whose source decides what a stage computes.
CODE_PACKAGES = ("ecgmodel", "flows", "tasks")
CODE_SUFFIXES = (".py", ".csv")


def default_roots() -> list[Path]:
    """The project's package folders (those of them that exist next to this one)."""
    return [REPO_ROOT / name for name in CODE_PACKAGES if (REPO_ROOT / name).is_dir()]


def code_digest(roots: Iterable[str | Path] | None = None, length: int = 16) -> str:
    """sha256 (first ``length`` hex digits) over every ``.py``/``.csv`` file under ``roots`` (sorted, with
    its path relative to its root's parent, so a renamed module changes the digest too); ``roots`` default to
    the project's packages :data:`CODE_PACKAGES`. Caches and ``__pycache__`` are skipped."""
    digest = hashlib.sha256()
    for root in sorted(Path(r).resolve() for r in (default_roots() if roots is None else roots)):
        files = sorted(
            p for p in root.rglob("*")
            if p.suffix in CODE_SUFFIXES and p.is_file() and "__pycache__" not in p.parts
        )  # fmt: skip
        for path in files:
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:length]
