"""``mlflow models serve`` of a registered ecgssl classifier on 127.0.0.1: one real record posted as JSON (the
shape docs/use.md shows) answers exactly what ``ecgssl predict`` writes for the same record file."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers_models import DATA, registered_classifier

from ecgmodel.predict import load_model, predict_inputs
from ecgmodel.serving.inputs import prepare_inputs, to_model_input

pytestmark = [pytest.mark.server, pytest.mark.slow]

RECORD = DATA / "challenge-2020" / "1.0.2" / "training" / "ptb" / "g1" / "S0001.hea"  # 1000 Hz: resampled


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_classifier_equals_ecgssl_predict(tmp_path):
    _, _, reg = registered_classifier(tmp_path)
    uri = reg["model_uri"]
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow_bin), "models", "serve", "-m", uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            env={**os.environ, "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"model server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(1)
        # the request: the record harmonised to the contract, as named tensors (docs/use.md)
        model = load_model(uri)
        rec = list(prepare_inputs([RECORD], model.contract))
        tensors = to_model_input(rec)
        body = {"inputs": {"signal": np.where(np.isnan(tensors["signal"]), None, tensors["signal"]).tolist(),
                           "lead_present": tensors["lead_present"].tolist()}}
        r = requests.post(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body),
                          headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text[:2000]
        answer = r.json()["predictions"]
        assert isinstance(answer, list) and len(answer) == 1
        row = predict_inputs(uri, [RECORD]).iloc[0]  # what `ecgssl predict --input S0001.hea` writes
        names = model.contract.class_names()
        np.testing.assert_allclose([answer[0][f"prob_{n}"] for n in names], [row[f"prob_{n}"] for n in names],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        assert [answer[0][f"label_{n}"] for n in names] == [bool(row[f"label_{n}"]) for n in names]
        assert answer[0]["labels"] == row["labels"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # the uvicorn workers of this session only
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
