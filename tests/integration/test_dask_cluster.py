"""Ingest through a real Dask cluster (`dask scheduler` + two `dask worker` processes on 127.0.0.1, as
infra/compose/dask.yml runs them) gives the same store, byte for byte in content, as a local in-process run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SAMPLE = REPO / "sample" / "physionet"
SOURCES = ["challenge-2020", "ptb-xl"]  # 44 records: two conversion batches, one per worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dask")
    env = dict(os.environ, DASK_TEMPORARY_DIRECTORY=str(tmp / "scratch"), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, cmd: list[str]) -> None:
        log = open(tmp / f"{name}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                            "--dashboard-address", ":0"])
        for i in range(2):
            start(f"worker{i}", [str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                 "--host", "127.0.0.1", "--dashboard-address", ":0", "--name", f"w{i}"])
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:  # the scheduler may not listen yet
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(2, timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield {"address": address, "tmp": tmp, "env": env}
    finally:
        try:  # a clean shutdown of scheduler and workers first; signals for whatever is left
            from distributed import Client

            with Client(address, timeout=5) as client:
                client.shutdown()
        except Exception:  # noqa: BLE001 - the cluster may never have come up
            pass
        for proc in reversed(procs):
            _stop(proc)
        for log in logs:
            log.close()


def test_cluster_ingest_equals_local_ingest(cluster):
    from distributed import Client

    from ecgmodel.data.convert import convert_sources
    from ecgmodel.data.download import download_source
    from ecgmodel.data.ingest_config import IngestConfig
    from ecgmodel.data.store import content_hash, open_store

    tmp = cluster["tmp"]
    # through the product: `ecgssl ingest --dask-address` (Prefect flow, conversion on the cluster's workers)
    cmd = [str(BIN / "ecgssl"), "ingest", "--mirror", str(SAMPLE), "--store", str(tmp / "cluster.zarr"),
           "--raw-dir", str(tmp / "raw-cluster"), "--dask-address", cluster["address"], "--max-windows", "2"]
    for slug in SOURCES:
        cmd += ["--source", slug]
    env = dict(cluster["env"], PREFECT_HOME=str(tmp / "prefect"))
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    with Client(cluster["address"]) as client:
        ran = client.run_on_scheduler(
            lambda dask_scheduler: {p: dict(tp.state_counts) for p, tp in dask_scheduler.task_prefixes.items()}
        )
    assert "convert_batch" in ran, f"no conversion task reached the cluster: {ran}"

    # reference: the same conversion in this process, no Dask at all
    cfg = IngestConfig(sources=SOURCES, mirror=str(SAMPLE), store=str(tmp / "local.zarr"),
                       raw_dir=str(tmp / "raw-local"), workers=0, max_windows_per_record=2, progress=False)
    fetched = []
    for slug in SOURCES:
        res = download_source(cfg.source(slug), cfg.mirror, cfg.raw_dir, progress=False).summary()
        fetched.append(dict(res, slug=slug, mirror=cfg.mirror))
    convert_sources(cfg, fetched, client=None)

    cluster_store, local_store = open_store(tmp / "cluster.zarr"), open_store(tmp / "local.zarr")
    assert cluster_store.n == local_store.n > 40
    assert content_hash(tmp / "cluster.zarr") == content_hash(tmp / "local.zarr")
    a, b = cluster_store.meta(), local_store.meta()
    assert list(a.columns) == list(b.columns)
    for col in a.columns:
        assert np.array_equal(a[col].to_numpy(), b[col].to_numpy(), equal_nan=a[col].dtype.kind == "f"), col
    assert np.array_equal(cluster_store.load_signal(), local_store.load_signal())
    assert np.array_equal(cluster_store.lead_present(), local_store.lead_present())


def _dies_on_e00015(root, source, paths, *rest):
    """convert_batch, except that the worker PROCESS dies when its batch holds E00015 (an OOM kill, a crash)."""
    from ecgmodel.data.convert import convert_batch

    if any(p.endswith("E00015") for p in paths):
        os._exit(1)
    return convert_batch(root, source, paths, *rest)


def test_worker_killed_mid_batch_loses_only_the_record_that_kills_it():
    """A real worker process dies mid-batch (distributed reports KilledWorker): the batch is bisected, the
    record that kills its worker is quarantined, every other record of the batch comes back."""
    import cloudpickle
    import dask
    from dask.distributed import Client, LocalCluster

    from ecgmodel.data.convert import _results
    from ecgmodel.data.sources import get_source

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    src = get_source("challenge-2020")
    root = str(REPO / "tests" / "data" / "physionet" / "challenge-2020" / "1.0.2")
    paths = ["training/cpsc_2018/g1/A0001", "training/georgia/g1/E00001", "training/georgia/g1/E00015",
             "training/ptb/g1/S0001"]  # fmt: skip
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40,
    ) as cluster, Client(cluster) as client:  # fmt: skip
        results = list(_results(client, _dies_on_e00015, [(root, src, paths, 500, 10.0, 6)], max_in_flight=2))
    assert len(results) == 1
    res = results[0]
    assert sorted(res.records) == ["A0001", "E00001", "S0001"] and len(res.batch) >= 3
    assert [f["record"] for f in res.failures] == ["E00015"]
    assert "KilledWorker" in res.failures[0]["reason"] and "worker crash" in res.failures[0]["reason"]


def test_local_cluster_logs_its_address_and_a_working_dashboard(caplog):
    """The ingest's own local cluster says where it is: its scheduler address and a dashboard link that answers
    (bokeh is installed with the `stack` extra)."""
    import logging
    import re

    import requests

    from ecgmodel.data.convert import dask_client

    with caplog.at_level(logging.INFO, logger="ecgmodel.data.convert"), dask_client(1) as client:
        said = " ".join(r.getMessage() for r in caplog.records if r.name == "ecgmodel.data.convert")
        m = re.search(r"local Dask cluster at (tcp://127\.0\.0\.1:\d+), 1 worker processes \(dashboard: (http://\S+)\)", said)
        assert m, said
        assert m.group(1) == client.scheduler.address
        assert requests.get(m.group(2), timeout=30).status_code == 200, m.group(2)
