"""prefect.yaml and infra/: every deployment loads, its parameters validate, pools and compose files are sane."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "prefect.yaml"
POOLS = REPO / "infra" / "work-pools"
COMPOSE = REPO / "infra" / "compose"


@pytest.fixture(scope="module")
def project() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text())


@pytest.fixture(scope="module")
def deployments(project) -> dict[str, dict]:
    return {d["name"]: d for d in project["deployments"]}


def test_prefect_yaml_schema(project):
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(project)
    assert {d.name for d in model.deployments} == {
        "pipeline", "pipeline-demo", "ingest", "pretrain", "pretrain-ddp", "ablation"
    }
    # Workers start flows in the checkout named by ECGSSL_HOME (resolved on the worker, at run time).
    assert project["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $ECGSSL_HOME }}"}}
    ]


def test_pools_and_schedules(deployments):
    from prefect.client.schemas.schedules import CronSchedule

    pools = {name: d["work_pool"]["name"] for name, d in deployments.items()}
    assert pools == {"pipeline": "gpu", "pipeline-demo": "cpu", "ingest": "cpu", "pretrain": "gpu",
                     "pretrain-ddp": "gpu", "ablation": "cpu"}  # fmt: skip
    crons = {name: [s["cron"] for s in d.get("schedules") or []] for name, d in deployments.items()}
    assert crons["ablation"] == crons["pretrain"] == crons["pipeline-demo"] == []  # on demand
    # deploying starts nothing: the schedules (downloads of all of PhysioNet) ship paused
    for name, dep in deployments.items():
        for schedule in dep.get("schedules") or []:
            assert schedule["active"] is False, f"{name}: schedule {schedule} is live on deploy"
    weekly, daily = crons["pipeline"][0], crons["ingest"][0]
    CronSchedule(cron=weekly, timezone="UTC")
    CronSchedule(cron=daily, timezone="UTC")
    assert weekly.split()[4] != "*" and daily.split()[2:] == ["*", "*", "*"]


@pytest.mark.parametrize("name", ["pipeline", "pipeline-demo", "ingest", "pretrain", "pretrain-ddp", "ablation"])
def test_entrypoint_loads_and_parameters_validate(deployments, name):
    """What a worker does: import the file-path entrypoint from the repo root and validate the parameters."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    dep = deployments[name]
    path, func = dep["entrypoint"].split(":")
    assert not Path(path).is_absolute() and (REPO / path).is_file(), dep["entrypoint"]
    flow = load_flow_from_entrypoint(str(REPO / path) + ":" + func)
    # `prefect deployment run '<flow>/<deployment>'` needs the flow name the docs use
    assert flow.name == name.removesuffix("-demo")
    params = dep.get("parameters") or {}
    schema = parameter_schema(flow).model_dump()
    assert set(params) <= set(schema["properties"]), f"{name}: unknown parameters {set(params) - set(schema['properties'])}"
    flow.validate_parameters(params)  # raises ParameterTypeError on a bad value


def test_demo_deployment_is_the_demo_preset(deployments):
    """`pipeline/pipeline-demo` runs exactly what `ecgssl pipeline --demo` runs (bundled sample, CPU-sized)."""
    from prefect.flows import load_flow_from_entrypoint

    from ecgmodel.pipeline_config import SAMPLE_MIRROR, PipelineConfig

    dep = deployments["pipeline-demo"]
    flow = load_flow_from_entrypoint(str(REPO / dep["entrypoint"]))
    cfg = flow.validate_parameters(dep["parameters"])["config"]
    assert cfg == PipelineConfig.demo()
    assert Path(cfg.ingest.mirror) == SAMPLE_MIRROR and cfg.pretrain.preset == "smoke"
    assert not Path(cfg.ingest.store).is_absolute()  # under the worker's checkout (ECGSSL_HOME)
    # a partial config starts from the preset and overrides only what it names
    small = flow.validate_parameters({"config": {"preset": "demo", "ablation": {"seeds": 1}}})["config"]
    assert small.ablation.seeds == 1 and small.ingest.store == cfg.ingest.store


def test_bad_parameters_are_rejected(deployments):
    from prefect.exceptions import ParameterTypeError
    from prefect.flows import load_flow_from_entrypoint

    from ecgmodel.pipeline_config import PipelineConfig

    flow = load_flow_from_entrypoint(str(REPO / "flows/pipeline.py") + ":pipeline_flow")
    # a partial config (as `--param 'config={"ablation": {"seeds": 5}}'` sends it) fills in the defaults
    cfg = flow.validate_parameters({"config": {"ablation": {"seeds": 5}}})["config"]
    assert cfg.ablation.seeds == 5 and cfg.ablation.tasks == PipelineConfig().ablation.tasks
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters({"config": {"ablation": {"fractions": [0.0, 2.0]}}})
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters({"config": {"ingest": {"no_such_key": 1}}})


@pytest.mark.parametrize("template", ["process-cpu.json", "process-gpu.json"])
def test_process_pool_templates_match_the_worker(template):
    import jsonschema
    from prefect.workers.process import ProcessWorker

    ours = json.loads((POOLS / template).read_text())
    default = ProcessWorker.get_default_base_job_template()
    assert ours["job_configuration"] == default["job_configuration"]
    assert set(ours["variables"]["properties"]) == set(default["variables"]["properties"])
    defaults = {k: v["default"] for k, v in ours["variables"]["properties"].items() if "default" in v}
    jsonschema.validate(defaults, ours["variables"])


def test_docker_gpu_template_requests_gpus():
    import jsonschema

    tpl = json.loads((POOLS / "docker-gpu.json").read_text())
    props = tpl["variables"]["properties"]
    for key, value in tpl["job_configuration"].items():
        assert value == "{{ " + key + " }}" and key in props
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    jsonschema.validate(defaults, tpl["variables"])
    request = defaults["container_create_kwargs"]["device_requests"][0]
    assert request["count"] == -1 and request["capabilities"] == [["gpu"]]


def _compose_services():
    for path in sorted(COMPOSE.glob("*.yml")):
        for name, svc in (yaml.safe_load(path.read_text()).get("services") or {}).items():
            yield path.name, name, svc


def test_compose_binds_to_localhost_by_default():
    ports = [(f, n, p) for f, n, svc in _compose_services() for p in svc.get("ports", [])]
    assert ports, "no published ports found"
    for file, name, port in ports:
        assert str(port).startswith("${ECGSSL_BIND:-127.0.0.1}:"), f"{file}:{name} publishes {port}"


def test_compose_credentials_come_from_the_environment():
    secret = re.compile(r"(PASSWORD|SECRET|ACCESS_KEY)", re.I)
    for file, name, svc in _compose_services():
        for key, value in (svc.get("environment") or {}).items():
            if secret.search(key) and not key.endswith("_FILE"):  # *_FILE: a secret file's name, not a value
                assert str(value).startswith("${"), f"{file}:{name}: {key} is hard-coded"
    example = (REPO / "infra" / ".env.example").read_text()
    for line in example.splitlines():
        if "=" in line and secret.search(line.split("=")[0]):
            assert line.split("=", 1)[1].startswith("change-me"), f".env.example holds a real-looking value: {line}"


def test_torchrun_launcher_targets_the_training_entry_point():
    script = (REPO / "infra" / "torchrun" / "pretrain.sh").read_text()
    assert "-m ecgmodel.train.pretrain" in script and "torch.distributed.run" in script
    import importlib.util

    assert importlib.util.find_spec("ecgmodel.train.pretrain") is not None
