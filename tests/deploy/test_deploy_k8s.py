"""deploy/k8s, checked without a cluster: every manifest against the Kubernetes schemas
(kubernetes-validate, strict), then probes, ports, env names and the mounted config path
compared with what the router really uses, and a ConfigMap update done the kubelet's way
(an atomic ``..data`` symlink swap) on a real directory under a real ``canary serve``."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from canary.config.loader import load_config
from canary.config.model import Config
from canary.tools.cli import build_parser
from tests.deploy.deploy_files import K8S, env_references, flag, image, k8s_objects, replace_flag
from tests.helpers import free_port, run_process, wait_until

VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CLI_ENV = {"CANARY_CONFIG", "CANARY_WORKERS"}  # read by `canary serve`, not by routes.yaml


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return k8s_objects()


def deployment(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return objects[("Deployment", "canary")]


def container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (only,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def routes_text(objects: dict[tuple[str, str], dict[str, Any]]) -> str:
    return objects[("ConfigMap", "canary-routes")]["data"]["routes.yaml"]  # type: ignore[no-any-return]


def literal_env(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """The Deployment's env with secrets as placeholders (what a pod would see, minus keys)."""
    out = {}
    for item in container(objects)["env"]:
        out[item["name"]] = item.get("value", f"placeholder-{item['name'].lower()}")
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(
    objects: dict[tuple[str, str], dict[str, Any]], version: str
) -> None:
    """Strict schema validation (unknown fields are errors) of every object, the Secret
    example included; and the validator does reject a misspelt field."""
    for doc in objects.values():
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any problem
    broken = copy.deepcopy(deployment(objects))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_kustomization_applies_everything_but_the_secret_example(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """kubectl apply -k takes every manifest except secret.example.yaml (an apply must
    never overwrite real keys), into the namespace it creates, with the Deployment's image."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert ("Namespace", kustomization["namespace"]) in objects
    (pin,) = kustomization["images"]
    assert container(objects)["image"].split(":")[0] == pin["name"]


def test_objects_select_the_router_pods(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Service, PodDisruptionBudget and HPA all point at the canary Deployment's pods."""
    dep = deployment(objects)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects[("Service", "canary")]["spec"]["selector"].items() <= labels.items()
    pdb = objects[("PodDisruptionBudget", "canary")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = objects[("HorizontalPodAutoscaler", "canary")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "canary",
    }
    assert hpa["spec"]["minReplicas"] == dep["spec"]["replicas"] == 3
    assert pdb["maxUnavailable"] == 1
    redis = objects[("Service", "canary-redis")]["spec"]
    redis_pods = objects[("Deployment", "canary-redis")]["spec"]["template"]["metadata"]
    assert redis["selector"].items() <= redis_pods["labels"].items()


def test_pods_run_locked_down_with_a_writable_tmp(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Non-root as the image's user, read-only root file system, no privilege escalation,
    no capabilities, resources set; /tmp an emptyDir (the workers' shared folder)."""
    pod = deployment(objects)["spec"]["template"]["spec"]
    c = container(objects)
    uid, _, gid = image().user.partition(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        int(uid),
        int(gid),
    )
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= c["resources"]["limits"].keys()
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_termination_grace_outlasts_the_drain(
    objects: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """terminationGracePeriodSeconds > server.drain_timeout_s (grace included) of the
    ConfigMap's routes.yaml, so the kubelet never SIGKILLs a pod that is still draining."""
    for key, value in literal_env(objects).items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(container(objects)["args"])
    drain = load_routes(routes_text(objects)).server.drain_timeout_s
    grace = deployment(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert args.drain_grace_s is not None and 0 < args.drain_grace_s < drain
    assert grace >= drain + 5


def load_routes(text: str) -> Config:
    """``load_config`` on the ConfigMap's routes.yaml (with the environment as it is)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "routes.yaml"
        path.write_text(text)
        return load_config(str(path))


def test_ports_probes_env_and_config_path_match_the_router(
    objects: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The args parse with the real CLI; the container port is the one it listens on and
    the image EXPOSEs; probes and the Service use it by name; CANARY_CONFIG is the
    ConfigMap's key in its directory mount (no subPath: updates must arrive), the same
    path the image documents; every ${VAR} of routes.yaml without a default is set, every
    Secret key exists in the example, and the ConfigMap loads with that environment."""
    c = container(objects)
    env = literal_env(objects)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(c["args"])
    (port,) = c["ports"]
    assert (args.verb, args.host, args.port) == ("serve", "0.0.0.0", port["containerPort"])
    assert port["containerPort"] == image().exposed and port["name"] == "http"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert objects[("Service", "canary")]["spec"]["ports"][0]["targetPort"] == "http"

    assert args.config == env["CANARY_CONFIG"] == image().config_path
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "routes"]
    assert "subPath" not in mount and mount["readOnly"] is True
    assert Path(mount["mountPath"]) / "routes.yaml" == Path(args.config)
    volumes = deployment(objects)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "routes", "configMap": {"name": "canary-routes"}} in volumes

    refs = env_references(routes_text(objects))
    assert {name for name, default in refs.items() if default is None} <= set(env)
    assert set(env) - CLI_ENV <= set(refs), set(env) - CLI_ENV - set(refs)
    assert set(image().env) >= CLI_ENV
    secret = objects[("Secret", "canary-secrets")]["stringData"]
    secret_refs = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in c["env"]
        if "valueFrom" in e and e["valueFrom"]["secretKeyRef"]["name"] == "canary-secrets"
    }
    assert (
        secret_refs
        == set(secret)
        == {
            "LEGACY_API_KEY",
            "RELAY_API_KEY",
            "CANARY_API_KEYS",
            "CANARY_ADMIN_TOKEN",
        }
    )
    cfg = load_routes(routes_text(objects))
    assert cfg.state.redis_url == env["REDIS_URL"]
    assert cfg.backends["legacy"].base_url == env["LEGACY_BASE_URL"]


# --- the ConfigMap update, end to end -----------------------------------------------------


def kubelet_write(mount: Path, text: str, stamp: str) -> None:
    """Project a ConfigMap the way the kubelet does: a new timestamped folder, a new
    ``..data`` symlink renamed over the old one (atomic), then the old folder removed.
    The first time, also the user-visible ``routes.yaml -> ..data/routes.yaml``."""
    folder = mount / f"..{stamp}"
    folder.mkdir()
    (folder / "routes.yaml").write_text(text)
    data = mount / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    os.symlink(folder.name, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", data)
    if not (mount / "routes.yaml").is_symlink():
        os.symlink("..data/routes.yaml", mount / "routes.yaml")
    if old is not None:
        shutil.rmtree(mount / old)


@pytest.mark.e2e
def test_a_configmap_update_is_applied_by_the_running_router(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    """The pod replayed: image entry point + the Deployment's args and env, routes.yaml
    in a kubelet-style ConfigMap folder; both probes answer; an update (new weights)
    shows on /status as the new version; SIGTERM fails readiness and exits 0 in time."""
    c = container(objects)
    pod = deployment(objects)["spec"]["template"]["spec"]
    mount = tmp_path / "etc-canary"
    mount.mkdir()
    first = routes_text(objects)
    kubelet_write(mount, first, "2026_11_30_10_00_00.000000001")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CANARY_", "REDIS_URL"))}
    env.update(literal_env(objects))
    env["CANARY_CONFIG"] = str(mount / Path(env["CANARY_CONFIG"]).name)
    env["REDIS_URL"] = ""  # the cluster's Redis is not here: in-process state
    exe = shutil.which(image().command[0], path=str(Path(sys.executable).parent))
    assert exe is not None
    port = free_port()
    args = replace_flag(replace_flag(c["args"], "--host", "127.0.0.1"), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    ready, live = c["readinessProbe"]["httpGet"]["path"], c["livenessProbe"]["httpGet"]["path"]

    def status() -> dict[str, Any]:
        return httpx.get(f"{url}/status", timeout=5).json()  # type: ignore[no-any-return]

    def chat_weights() -> dict[str, float]:
        return next(r["configured"] for r in status()["routes"] if r["name"] == "chat")

    with run_process([exe, *args], f"{url}{ready}", 20, env=env, cwd=tmp_path) as process:
        assert httpx.get(f"{url}{live}").status_code == 200
        doc = status()
        assert doc["config"]["version"] == hashlib.sha256(first.encode()).hexdigest()
        assert doc["config"]["path"] == env["CANARY_CONFIG"]
        assert chat_weights() == {"legacy": 95, "relay": 5}

        second = first.replace(
            "weights: {legacy: 95, relay: 5}", "weights: {legacy: 50, relay: 50}"
        )
        assert second != first
        kubelet_write(mount, second, "2026_11_30_10_05_00.000000002")
        version = hashlib.sha256(second.encode()).hexdigest()
        wait_until(lambda: status()["config"]["version"] == version, 10, "the new version")
        assert chat_weights() == {"legacy": 50, "relay": 50}
        assert status()["config"]["error"] is None
        assert httpx.get(f"{url}{ready}").status_code == 200
        assert sorted(p.name for p in mount.iterdir()) == [
            "..2026_11_30_10_05_00.000000002",
            "..data",
            "routes.yaml",
        ]

        t0 = time.monotonic()
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{url}{ready}").status_code == 503, 2, "readiness off")
        assert process.wait(timeout=pod["terminationGracePeriodSeconds"]) == 0
        stopped_after = time.monotonic() - t0
    grace = float(flag(c["args"], "--drain-grace-s"))
    print(f"\n[k8s] SIGTERM -> exit 0 after {stopped_after:.1f} s (grace {grace:g} s)")
    assert stopped_after >= grace  # it kept accepting through the grace
