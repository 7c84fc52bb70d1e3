"""Embedding flow (``ecgssl embed``): one vector per record of a store from a frozen encoder, as Parquet.

``ecgssl embed --encoder URI|PATH --store STORE --out FILE.parquet [--pooling mean-max|mean|lead-mean]``, or
``--input PATH [PATH ...]`` instead of ``--store`` for your own files (WFDB headers, folders of WFDB/EDF files,
EDF files, stores; harmonised as ingest does, as ``ecgssl predict`` reads them; columns record, input, n_windows,
warnings, error, vector - NaN for a record that cannot be used, its reason in ``error``);
Without ``--encoder`` the registry's ``models:/ecgssl-encoder@champion`` is used. ``--random [--seed N]`` embeds with a seeded random encoder of the same architecture (of ``--encoder`` when
given, else of the ``cpu`` preset): the baseline of a linear probe. ``--encoder`` takes a checkpoint or encoder
file, a run folder, an MLflow run id, ``runs:/...`` or ``models:/ecgssl-encoder/N``. Columns: record, source,
database, split (PTB-XL official split from strat_fold, else empty), fold, patient_id, dx, n_windows, n_crops,
vector (float32). Read it with ``pandas.read_parquet`` or ``ecgmodel.embed.read_embeddings``.
"""

from __future__ import annotations

import argparse
import json

from prefect import flow

from tasks.embed import embed_task


@flow(name="embed", log_prints=True)
def embed_flow(
    store: str | None,
    out: str,
    encoder: str | None = None,
    random: bool = False,
    seed: int = 0,
    pooling: str = "mean-max",
    batch_size: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    inputs: list[str] | None = None,
) -> dict:
    """Embed ``store`` (or ``inputs``) into ``out``; returns the summary (records, dim, seconds)."""
    result = embed_task(store, out, encoder, random, None, seed, pooling, batch_size, device, threads, inputs)
    print(f"{result['records']} records x {result['dim']} -> {result['out']} ({result['seconds']} s)")
    return result


def _handler(args: argparse.Namespace) -> int:
    from ecgmodel.errors import UserError

    if not args.random and not args.encoder:  # the registry's champion (docs/use.md "Registry")
        from ecgmodel.tracking import DEFAULT_ENCODER_URI

        args.encoder = DEFAULT_ENCODER_URI
    if (args.store is None) == (not args.input):
        raise UserError("give exactly one of --store STORE or --input PATH ... (rule: one source of records)",
                        "ecgssl embed --encoder URI --input my_ecgs/ --out embeddings.parquet")  # fmt: skip
    if not str(args.out).endswith(".parquet"):
        raise UserError(f"--out {args.out}: embeddings are written as Parquet (rule: a .parquet file)",
                        "ecgssl embed ... --out embeddings.parquet")  # fmt: skip
    if not args.random and str(args.encoder).startswith(("models:/", "runs:/")):
        from ecgmodel.predict import local_model_path

        local_model_path(args.encoder)  # an unknown model, version or alias: one line, before Prefect starts
    if args.input:  # expected failures before Prefect starts: a missing input, a model that is not an encoder
        from ecgmodel.predict import load_model
        from ecgmodel.serving.inputs import expand_inputs

        expand_inputs(args.input)
        if not args.random and load_model(args.encoder).kind != "encoder":
            raise UserError(f"--encoder {args.encoder} is a classifier, not an encoder",
                            f"ecgssl predict --model {args.encoder} --input ...")  # fmt: skip
    result = embed_flow(store=args.store, out=args.out, encoder=args.encoder, random=args.random, seed=args.seed,
                        pooling=args.pooling, batch_size=args.batch_size, device=args.device,
                        threads=args.threads, inputs=list(args.input) if args.input else None)  # fmt: skip
    print(json.dumps(result, indent=2, default=str))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="one embedding per record of a store (Parquet), from a frozen encoder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--encoder", default=None, metavar="URI|PATH",
                   help="encoder: path, run id, runs:/..., models:/ecgssl-encoder/N (default: models:/ecgssl-encoder@champion; "
                   "architecture only with --random)")
    p.add_argument("--store", default=None, help="path of the ecgssl store")
    p.add_argument("--input", nargs="+", default=None, metavar="PATH",
                   help="instead of --store: WFDB .hea files, folders of WFDB/EDF files, .edf files, stores")
    p.add_argument("--out", required=True, metavar="FILE.parquet", help="output Parquet file")
    p.add_argument("--random", action="store_true", help="seeded random encoder of the same architecture")
    p.add_argument("--seed", type=int, default=0, help="seed of the random encoder (default 0)")
    p.add_argument("--pooling", choices=["mean-max", "mean", "lead-mean"], default="mean-max",
                   help="token pooling (default mean-max; see ecgmodel/embed.py)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="crops per forward pass (default: 32 on a CPU, 256 on a GPU)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.set_defaults(func=_handler)
