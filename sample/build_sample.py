"""Rebuild the bundled demo sample (``sample/physionet``) from a full PhysioNet-shaped mirror.

The sample is a handful of REAL records copied byte for byte, laid out like ``physionet.org/files/<slug>/<version>``
so the ingest reads it exactly as it reads PhysioNet. ``RECORDS`` files, the PTB-XL / LUDB metadata tables and
``SHA256SUMS.txt`` are regenerated for the subset. Usage::

    python sample/build_sample.py --mirror ../shared/physionet --out sample/physionet

The selection below is fixed (not random) so the sample is reproducible; it was chosen for coverage:
labelled Challenge-2020/2021 records spanning many of the 27 scored classes plus a few unlabelled ones, PTB-XL
records with myocardial-infarction locations (anterior / inferior / lateral) and normals across several
``strat_fold`` values, and three LUDB records. Total size stays under ~8 MB.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
from pathlib import Path

CHALLENGE_2020 = [
    # cpsc_2018 (one labelled, one unlabelled)
    "training/cpsc_2018/g1/A5432", "training/cpsc_2018/g1/A0001",
    # cpsc_2018_extra: AF, AFL, IAVB, RBBB, LBBB, PAC, PVC, SA, SB, STach, brady, pacing, ...
    "training/cpsc_2018_extra/g1/Q0001", "training/cpsc_2018_extra/g1/Q0010",
    "training/cpsc_2018_extra/g1/Q0012", "training/cpsc_2018_extra/g1/Q0027",
    "training/cpsc_2018_extra/g1/Q0033", "training/cpsc_2018_extra/g1/Q0048",
    "training/cpsc_2018_extra/g1/Q0050", "training/cpsc_2018_extra/g1/Q0077",
    "training/cpsc_2018_extra/g1/Q0096", "training/cpsc_2018_extra/g1/Q0122",
    "training/cpsc_2018_extra/g1/Q0398", "training/cpsc_2018_extra/g1/Q1804",
    "training/cpsc_2018_extra/g1/Q1805", "training/cpsc_2018_extra/g1/Q2428",
    # georgia: header names the record "E00009.mat"; E00015 repeats a code; E00001 is unlabelled
    "training/georgia/g1/E00001", "training/georgia/g1/E00009", "training/georgia/g1/E00015",
    "training/georgia/g1/E00018", "training/georgia/g1/E00793",
    # ptb-xl in Challenge format
    "training/ptb-xl/g1/HR00001", "training/ptb-xl/g1/HR00599", "training/ptb-xl/g1/HR20715",
]
CHALLENGE_2021 = [
    "training/chapman_shaoxing/g1/JS00666",
    "training/georgia/g1/E07500", "training/georgia/g1/E07501", "training/georgia/g1/E07504",
    "training/georgia/g1/E07506", "training/georgia/g1/E07509", "training/georgia/g1/E07516",
    "training/ningbo/g1/JS20000", "training/ningbo/g1/JS20003", "training/ningbo/g1/JS20008",
    "training/ptb-xl/g1/HR06002",
]
# PTB-XL ecg_ids: inferior MI (IMI/ILMI), anterior MI (ASMI/AMI), lateral MI (LMI/ALMI) and normals.
PTBXL_IDS = [
    8, 139, 142, 210, 290, 155,      # inferior
    63, 131, 177, 492, 77, 418,      # anterior
    50, 409, 152,                    # lateral
    1, 2, 9, 10, 17,                 # normal / other
]
LUDB_IDS = [1, 2, 3]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy(src_root: Path, dst_root: Path, rel: str) -> None:
    src, dst = src_root / rel, dst_root / rel
    if not src.is_file():
        raise FileNotFoundError(f"{src}: listed in the sample selection but missing from the mirror")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def write_sums(root: Path) -> None:
    """``<sha256> <path>`` for every file under ``root`` (sorted by path), as the mirror's own files are."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    lines = [f"{sha256(root / rel)} {rel}" for rel in files if rel != "SHA256SUMS.txt"]
    (root / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")


def build_challenge(mirror: Path, out: Path, slug: str, records: list[str]) -> None:
    src, dst = mirror / slug, out / slug
    for rec in records:
        for ext in (".hea", ".mat"):
            copy(src, dst, rec + ext)
    (dst / "RECORDS").write_text("\n".join(records) + "\n")
    # Each sub-database folder has its own RECORDS listing "g1/<name>" lines, as on PhysioNet.
    by_db: dict[str, list[str]] = {}
    for rec in records:
        _, db, rest = rec.split("/", 2)
        by_db.setdefault(db, []).append(rest)
    for db, rests in by_db.items():
        (dst / "training" / db / "RECORDS").write_text("\n".join(rests) + "\n")
    write_sums(dst)


def build_ptbxl(mirror: Path, out: Path) -> None:
    src, dst = mirror / "ptb-xl/1.0.3", out / "ptb-xl/1.0.3"
    with open(src / "ptbxl_database.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames
        rows = [r for r in reader if int(r["ecg_id"]) in PTBXL_IDS]
    if len(rows) != len(PTBXL_IDS):
        raise ValueError(f"ptbxl_database.csv: found {len(rows)} of the {len(PTBXL_IDS)} selected ecg_ids")
    dst.mkdir(parents=True, exist_ok=True)
    with open(dst / "ptbxl_database.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    records = [r["filename_lr"] for r in rows] + [r["filename_hr"] for r in rows]
    for rec in records:
        for ext in (".hea", ".dat"):
            copy(src, dst, rec + ext)
    for name in ("scp_statements.csv", "LICENSE.txt"):
        copy(src, dst, name)
    (dst / "RECORDS").write_text("\n".join(records) + "\n")
    write_sums(dst)


def build_ludb(mirror: Path, out: Path) -> None:
    src, dst = mirror / "ludb/1.0.1", out / "ludb/1.0.1"
    suffixes = ["hea", "dat", "i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6"]
    for rid in LUDB_IDS:
        for suffix in suffixes:
            copy(src, dst, f"data/{rid}.{suffix}")
    with open(src / "ludb.csv", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [r for r in reader if r and int(r[0]) in LUDB_IDS]
    with open(dst / "ludb.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    for name in ("LICENSE.txt", "README", "ANNOTATORS"):
        copy(src, dst, name)
    (dst / "RECORDS").write_text("\n".join(f"data/{rid}" for rid in LUDB_IDS) + "\n")
    write_sums(dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, required=True, help="full PhysioNet-shaped mirror to copy from")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "physionet")
    args = parser.parse_args()
    for slug in ("challenge-2020/1.0.2", "challenge-2021/1.0.3", "ptb-xl/1.0.3", "ludb/1.0.1"):
        if (args.out / slug).exists():
            shutil.rmtree(args.out / slug)
    build_challenge(args.mirror, args.out, "challenge-2020/1.0.2", CHALLENGE_2020)
    build_challenge(args.mirror, args.out, "challenge-2021/1.0.3", CHALLENGE_2021)
    build_ptbxl(args.mirror, args.out)
    build_ludb(args.mirror, args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"sample written to {args.out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
