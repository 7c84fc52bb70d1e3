"""Check: pretraining through ``infra/torchrun/pretrain.sh`` killed mid-run and relaunched continues its loss
curve exactly.

    python bench/torchrun_resume.py --store STORE --out runs/kill-resume --preset base --steps 300 \\
        --kill-after 150 --set data.batch_size=64 [--nproc 1] [--json result.json]

1. launches the script (``NPROC_PER_NODE`` processes: NCCL on CUDA, gloo on CPU) from scratch for ``--steps``
   steps, checkpointing every ``--ckpt-every`` and logging every ``--log-every`` steps to ``metrics.jsonl``;
2. as soon as a step >= ``--kill-after`` is logged, kills the launcher and its workers (SIGKILL, as a crash or a
   preemption would);
3. relaunches the same command, which resumes from the last checkpoint (step K) and runs to the end;
4. compares the logged losses of the steps after K that were logged both before the kill and after the resume
   (the resumed run recomputes them): equal bit for bit when the curve continues exactly.
Prints one JSON object (``status``: pass / fail) and writes it to ``--json``; exits 1 on fail.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOSS_KEYS = ("loss", "recon_loss", "lead_ce", "lead_acc")


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for ln in path.read_text().splitlines():
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:  # a line being written when the process was killed
            pass
    return out


def _launch(cmd: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True, help="run folder (emptied first)")
    ap.add_argument("--preset", default="base")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--kill-after", type=int, default=150, help="kill once a step >= this is logged")
    ap.add_argument("--nproc", type=int, default=1, help="NPROC_PER_NODE")
    ap.add_argument("--timeout", type=float, default=300, help="seconds for each of the two launches")
    ap.add_argument("--rtol", type=float, default=0.0, help="allowed relative difference (0 = bit-exact)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)
    if not args.ckpt_every <= args.kill_after < args.steps:
        ap.error("need --ckpt-every <= --kill-after < --steps (a checkpoint must exist before the kill)")
    out = Path(args.out)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    sets = [f"optim.max_steps={args.steps}", f"run.ckpt_every={args.ckpt_every}", f"run.log_every={args.log_every}",
            "run.mlflow=false", "run.progress=false", *args.overrides]  # fmt: skip
    cmd = ["bash", str(REPO / "infra/torchrun/pretrain.sh"), "--store", str(args.store), "--out", str(out),
           "--preset", args.preset] + [a for s in sets for a in ("--set", s)]  # fmt: skip
    env = {**os.environ, "NPROC_PER_NODE": str(args.nproc), "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
    metrics = out / "metrics.jsonl"
    result: dict = {"command": " ".join(cmd), "nproc": args.nproc, "steps": args.steps, "status": "fail"}
    t0 = time.perf_counter()
    with open(out.parent / f"{out.name}.launch1.log", "w") as log:
        proc = _launch(cmd, env, log)
        killed_at = None
        while time.perf_counter() - t0 < args.timeout:
            done = [r["step"] for r in _lines(metrics)]
            if done and max(done) >= args.kill_after:
                _kill_group(proc)
                killed_at = max(r["step"] for r in _lines(metrics))  # it may have gone on a little
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        else:
            _kill_group(proc)
    result["first_launch_s"] = round(time.perf_counter() - t0, 1)
    if killed_at is None:
        result["error"] = (f"first launch ended (rc={proc.returncode}) or timed out before step {args.kill_after}; "
                           f"log: {log.name}")  # fmt: skip
        return _finish(result, args.json)
    before = _lines(metrics)
    from ecgmodel.train.checkpoint import load_checkpoint

    resumed_from = int(load_checkpoint(out / "ckpt_last.pt")["step"])
    result.update(killed_after_step=killed_at, resumed_from=resumed_from)
    if resumed_from >= killed_at:
        result["error"] = (f"killed at step {killed_at}, after the checkpoint of step {resumed_from}: nothing to "
                           "compare; kill earlier (--kill-after) or checkpoint less often (--ckpt-every)")  # fmt: skip
        return _finish(result, args.json)
    t1 = time.perf_counter()
    with open(out.parent / f"{out.name}.launch2.log", "w") as log:
        proc = _launch(cmd, env, log)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = "timeout"
    result["second_launch_s"] = round(time.perf_counter() - t1, 1)
    after = _lines(metrics)
    result["second_launch_rc"] = rc
    if rc != 0:
        result["error"] = f"resumed launch failed (rc={rc}); log: {log.name}"
        return _finish(result, args.json)
    by_step = {r["step"]: r for r in after}
    compared, diffs = 0, []
    for r in before:
        if r["step"] <= resumed_from:
            continue  # kept as they were
        s = by_step.get(r["step"])
        if s is None:
            continue
        for k in LOSS_KEYS:
            if k in r:
                compared += 1
                diffs.append(abs(r[k] - s[k]) / max(abs(r[k]), 1e-12))
    steps_after = [r["step"] for r in after]
    expected = list(range(args.log_every, args.steps + 1, args.log_every))
    result.update(
        compared_values=compared, bit_exact=bool(compared) and max(diffs) == 0.0,
        max_rel_diff=max(diffs) if diffs else None, final_step=max(steps_after) if steps_after else None,
        curve_complete=steps_after == expected,
        samples_per_s=[round(r["samples_per_s"], 1) for r in after[-3:]],
        loss_first_last=[after[0]["loss"], after[-1]["loss"]] if after else None,
    )  # fmt: skip
    ok = compared > 0 and max(diffs) <= args.rtol and result["curve_complete"]
    result["status"] = "pass" if ok else "fail"
    return _finish(result, args.json)


def _finish(result: dict, path: str | None) -> int:
    text = json.dumps(result)
    print(text)
    if path:
        Path(path).write_text(text + "\n")
    return 0 if result["status"] == "pass" else 1


if __name__ == "__main__":
    raise SystemExit(main())
