"""DOCKER provider through the real docker SDK, against a recording HTTP server standing in
for the Docker Engine API (these machines have no engine)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from recording_server import RecordingServer, Request

from fogverse.autoscale.deploy import DeployConfig, build_deploy_scripts, stop_handle

pytest.importorskip("docker")

from fogverse.autoscale.deploy.docker import DockerDeployer

API = "v1.43"
logger = logging.getLogger(__name__)


@pytest.fixture
def engine() -> Any:
    containers: dict[str, dict[str, Any]] = {}

    def create(req: Request, m: Any) -> tuple[int, Any]:
        cid = f"c{len(containers) + 1:063d}"
        containers[cid] = {
            "Id": cid,
            "Name": "/" + req.query["name"][0],
            "Config": req.json(),
            "State": {"Running": False, "Status": "created"},
        }
        return 201, {"Id": cid, "Warnings": []}

    def start(req: Request, m: Any) -> tuple[int, Any]:
        containers[m["id"]]["State"].update(Running=True, Status="running")
        return 204, None

    def inspect(req: Request, m: Any) -> tuple[int, Any]:
        return (200, containers[m["id"]]) if m["id"] in containers else (404, {"message": "no"})

    def stop(req: Request, m: Any) -> tuple[int, Any]:
        containers[m["id"]]["State"].update(Running=False, Status="exited")
        return 204, None

    def wait(req: Request, m: Any) -> tuple[int, Any]:
        return 200, {"StatusCode": 0 if not containers[m["id"]]["State"]["Running"] else 137}

    def remove(req: Request, m: Any) -> tuple[int, Any]:
        containers.pop(m["id"])
        return 204, None

    with RecordingServer() as server:
        server.route("GET", r"/version", lambda r, m: (200, {"ApiVersion": "1.43"}))
        server.route("POST", rf"/{API}/containers/create", create)
        server.route("POST", rf"/{API}/containers/(?P<id>\w+)/start", start)
        server.route("GET", rf"/{API}/containers/(?P<id>\w+)/json", inspect)
        server.route("POST", rf"/{API}/containers/(?P<id>\w+)/stop", stop)
        server.route("POST", rf"/{API}/containers/(?P<id>\w+)/wait", wait)
        server.route("DELETE", rf"/{API}/containers/(?P<id>\w+)", remove)
        server.containers = containers  # type: ignore[attr-defined]
        yield server


def _config(**extra: Any) -> DeployConfig:
    return {
        "provider": "DOCKER",
        "service_name": "slow",
        "max_instance": 3,
        "extra_configs": {"image": "attacker/evil"},
        "instance_id": "slow-abc123",
        "source_topic": "frames",
        "target_topic": "boxes",
        "group_id": "detector",
        "control_topic": "fogverse-autoscale",
        "control_servers": "kafka:9092",
        **extra,
    }


def test_deploy_creates_and_starts_a_labelled_container_and_stop_removes_it(
    engine: RecordingServer,
) -> None:
    deployer = DockerDeployer(
        {
            "slow": {
                "image": "fogverse/slow:1",
                "environment": {"LOG_LEVEL": "debug"},
                "labels": {"team": "vision"},
                "stop_timeout": 7,
            }
        },
        base_url=engine.url.replace("http", "tcp"),
        api_version="1.43",
    )
    handle = deployer(logger, _config())
    assert handle is not None and handle.instance_id == "slow-abc123"
    create = engine.requests[0]
    assert (create.method, create.path) == ("POST", f"/{API}/containers/create")
    assert create.query["name"] == ["slow-abc123"]
    body = create.json()
    # The image comes from the master's configuration, never from the request's extras.
    assert body["Image"] == "fogverse/slow:1"
    env = dict(e.split("=", 1) for e in body["Env"])
    assert env["FOGVERSE_INSTANCE_ID"] == "slow-abc123"
    assert env["CONSUMER_TOPIC"] == "frames" and env["PRODUCER_TOPIC"] == "boxes"
    assert env["GROUP_ID"] == "detector" and env["LOG_LEVEL"] == "debug"
    assert env["FOGVERSE_OBSERVER_TOPIC"] == "fogverse-autoscale"
    assert env["FOGVERSE_OBSERVER_SERVERS"] == "kafka:9092"
    assert body["Labels"]["fogverse.instance"] == "slow-abc123"
    assert body["Labels"]["team"] == "vision"
    cid = handle.id
    assert ("POST", f"/{API}/containers/{cid}/start") in engine.calls()
    assert engine.containers[cid]["State"]["Running"]  # type: ignore[attr-defined]

    assert handle.alive()
    asyncio.run(stop_handle(handle))  # as the master does: sync stop() runs in a thread
    stop = next(r for r in engine.requests if r.path.endswith("/stop"))
    assert stop.query.get("t") == ["7"]
    assert handle.exit_code == 0
    assert deployer.handles == [handle]
    assert engine.calls()[-1] == ("DELETE", f"/{API}/containers/{cid}")
    assert not engine.containers  # type: ignore[attr-defined]


def test_unknown_service_is_a_failed_deploy_without_any_request(engine: RecordingServer) -> None:
    deployer = DockerDeployer(
        {"slow": {"image": "x"}}, base_url=engine.url.replace("http", "tcp"), api_version="1.43"
    )
    assert deployer(logger, _config(service_name="other")) is None
    assert engine.requests == []


def test_engine_errors_propagate_so_the_master_backs_off(engine: RecordingServer) -> None:
    engine.routes.insert(
        0,
        (
            "POST",
            __import__("re").compile(rf"/{API}/containers/create$"),
            lambda r, m: (500, {"message": "no space left on device"}),
        ),
    )
    deployer = DockerDeployer(
        {"slow": {"image": "x"}}, base_url=engine.url.replace("http", "tcp"), api_version="1.43"
    )
    with pytest.raises(Exception, match="no space left"):
        deployer(logger, _config())


def test_built_from_master_yaml_settings_with_api_version_negotiation(
    engine: RecordingServer,
) -> None:
    scripts = build_deploy_scripts(
        {
            "DOCKER": {
                "type": "docker",
                "base_url": engine.url.replace("http", "tcp"),
                "services": {"slow": {"image": "fogverse/slow:1"}},
            }
        }
    )
    fn = scripts.get_deploy_function("DOCKER")
    assert isinstance(fn, DockerDeployer)
    assert engine.calls()[0] == ("GET", "/version")  # version="auto" asks the engine
    assert fn(logger, _config()) is not None
