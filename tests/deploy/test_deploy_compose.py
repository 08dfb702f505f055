"""deploy/docker-compose.yml, checked without a Docker engine: the compose-spec schema
(check-jsonschema's vendored copy), then its services, ports, mounts and environment
compared with the Dockerfile, the CLI parser and the routes.yaml the replicas load."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary.config.loader import load_config
from canary.tools.cli import build_parser
from tests.deploy.deploy_files import (
    COMPOSE,
    DEPLOY,
    compose_interpolate,
    env_references,
    image,
)

ROUTERS = ["router-1", "router-2", "router-3"]
SIMULATORS = {"legacy": 9101, "relay": 9102}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port) of ``ports: ["ADDR:HOST:CONTAINER"]``."""
    out = {}
    for entry in service.get("ports", []):
        addr, host, container = entry.split(":")
        out[int(container)] = (addr, int(host))
    return out


def test_compose_file_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    """The compose-spec JSON schema accepts the file (and rejects a misspelt key)."""

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "check_jsonschema", "--builtin-schema"]
        args += ["vendor.compose-spec", str(path)]
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)

    good = check(COMPOSE)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periode:"))
    assert check(bad).returncode == 1


def test_stack_has_three_routers_redis_two_simulators_and_optional_observability(
    compose: dict[str, Any],
) -> None:
    """The services the rehearsal needs; Prometheus and Grafana only under a profile."""
    svc = services(compose)
    assert set(svc) == {*ROUTERS, "lb", "redis", *SIMULATORS, "prometheus", "grafana"}
    for name in ["prometheus", "grafana"]:
        assert svc[name]["profiles"] == ["observability"]
    for name, service in svc.items():
        if name not in ("prometheus", "grafana"):
            assert "profiles" not in service, name


def test_routers_run_the_image_with_its_config_path_env_and_port(
    compose: dict[str, Any],
) -> None:
    """Each replica: the Dockerfile's image and command, routes.yaml mounted read-only at
    the folder of CANARY_CONFIG, REDIS_URL on the redis service, its own host port."""
    img = image()
    svc = services(compose)
    host_ports = set()
    for name in ROUTERS:
        router = svc[name]
        assert router["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert "command" not in router and "entrypoint" not in router  # the image's own
        assert router["volumes"] == [f"./config:{Path(img.config_path).parent}:ro"]
        assert router["read_only"] is True and "/tmp" in router["tmpfs"]
        env = router["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert compose_interpolate(env["CANARY_WORKERS"]).isdigit()
        ports = published(router)
        assert list(ports) == [img.exposed]  # the port the image serves on
        addr, host_port = ports[img.exposed]
        assert addr == "127.0.0.1"
        host_ports.add(host_port)
        assert {"redis", *SIMULATORS} <= set(router["depends_on"])
    assert len(host_ports) == 3


def test_the_mounted_routes_file_uses_only_variables_compose_sets(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ${VAR} in deploy/config/routes.yaml is set on the routers (or defaults), and
    the file loads with the values compose gives when nothing is exported."""
    routes = DEPLOY / "config" / "routes.yaml"
    names = env_references(routes.read_text())
    env = services(compose)["router-1"]["environment"]
    assert set(names) <= set(env), set(names) - set(env)
    assert set(env) - set(names) == {"CANARY_WORKERS"}  # read by the CLI, not the file
    for key, value in env.items():
        monkeypatch.setenv(key, compose_interpolate(str(value)))
    cfg = load_config(str(routes))
    assert cfg.backends["legacy"].base_url == "http://legacy:9101/v1"
    assert cfg.backends["relay"].base_url == "http://relay:9102/v1"
    assert cfg.state.redis_url == "redis://redis:6379/0"


def test_simulators_listen_where_the_routes_and_health_checks_look(
    compose: dict[str, Any],
) -> None:
    """`canary simulate` commands parse with the real CLI; their ports match the default
    base URLs, the published ports and their health checks."""
    svc = services(compose)
    env = svc["router-1"]["environment"]
    for name, port in SIMULATORS.items():
        sim = svc[name]
        args = build_parser().parse_args(sim["command"])
        assert (args.verb, args.host, args.port, args.name) == ("simulate", "0.0.0.0", port, name)
        assert compose_interpolate(env[f"{name.upper()}_BASE_URL"]) == f"http://{name}:{port}/v1"
        assert published(sim) == {port: ("127.0.0.1", port)}
        assert f"http://127.0.0.1:{port}/_sim/stats" in sim["healthcheck"]["test"][-1]


def test_stop_grace_outlasts_the_drain_timeout(compose: dict[str, Any]) -> None:
    """docker stop waits longer than server.drain_timeout_s, so a replica drains fully."""
    drain = load_config(str(DEPLOY / "config" / "routes.yaml")).server.drain_timeout_s
    for name in ROUTERS:
        grace = services(compose)[name]["stop_grace_period"]
        assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) > drain


def test_load_balancer_spreads_over_the_three_replicas_unbuffered(
    compose: dict[str, Any],
) -> None:
    """nginx.conf names each router service on the image's port and streams unbuffered."""
    text = (DEPLOY / "nginx.conf").read_text()
    port = image().exposed
    upstreams = re.findall(r"^\s*server\s+([\w-]+):(\d+)", text, re.M)
    assert upstreams == [(name, str(port)) for name in ROUTERS]
    assert re.search(r"proxy_buffering\s+off;", text)
    assert services(compose)["lb"]["volumes"] == ["./nginx.conf:/etc/nginx/nginx.conf:ro"]


def test_prometheus_scrapes_every_replica_and_grafana_gets_the_dashboard(
    compose: dict[str, Any],
) -> None:
    """prometheus.yml targets the three replicas' /metrics; Grafana is provisioned with a
    Prometheus data source and the dashboard JSON from deploy/grafana."""
    svc = services(compose)
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"{name}:{image().exposed}" for name in ROUTERS]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in svc["prometheus"]["volumes"]

    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in svc["grafana"]["volumes"])
    for source in mounts:
        assert (DEPLOY / source).exists(), source
    dashboards = mounts["./grafana/canary-dashboard.json"]
    json.loads((DEPLOY / "grafana" / "canary-dashboard.json").read_text())  # valid JSON
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "canary.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == str(Path(dashboards).parent)
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    assert svc["prometheus"]["command"] == ["--config.file=/etc/prometheus/prometheus.yml"]
