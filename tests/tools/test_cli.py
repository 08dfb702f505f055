"""The ``canary`` command as a user runs it: check, and serve with built-in simulators."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, canary, free_port, run_process, simulator, wait_until

pytestmark = pytest.mark.e2e


def test_check_prints_the_routing_table_for_the_example_config() -> None:
    """The shipped routes.yaml is valid; check prints routes in match order and exits 0."""
    result = canary("check", "-c", "routes.yaml")
    assert result.returncode == 0, result.stderr
    assert "1. chat" in result.stdout and "2. claude" in result.stdout
    assert "3. default" in result.stdout
    assert "/v1/messages*" in result.stdout
    assert "legacy 90%, relay 10%" in result.stdout
    assert "is valid" in result.stdout


def test_check_exits_1_with_located_errors(tmp_path: Path) -> None:
    """An invalid file gives exit 1 and every problem with file, line and key path."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "backends:\n"
        "  legacy: {base_url: 'http://127.0.0.1:1/v1'}\n"
        "routes:\n"
        "  - name: chat\n"
        "    weights: {legacy: -1, ghost: 5}\n"
    )
    result = canary("check", "-c", str(bad))
    assert result.returncode == 1
    assert f"{bad}:5: routes[0].weights.legacy: must be >= 0" in result.stderr
    assert f"{bad}:5: routes[0].weights.ghost: unknown backend 'ghost'" in result.stderr


def test_check_reports_a_missing_file() -> None:
    """A missing file is a located error too, not a traceback."""
    result = canary("check", "-c", "/nonexistent/routes.yaml")
    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_simulators_prints_examples_that_work_as_printed(tmp_path: Path) -> None:
    """`serve --simulators auto` starts providers for local backends; its examples answer."""
    legacy, relay, port = free_port(), free_port(), free_port()
    config = tmp_path / "routes.yaml"
    text = (ROOT / "routes.yaml").read_text()
    text = text.replace("127.0.0.1:9101", f"127.0.0.1:{legacy}")
    text = text.replace("127.0.0.1:9102", f"127.0.0.1:{relay}")
    config.write_text(text)
    env = {"LEGACY_BASE_URL": "", "RELAY_BASE_URL": "", "CANARY_API_KEYS": ""}
    args = [sys.executable, "-m", "canary", "serve", "-c", str(config), "--port", str(port)]
    with (
        tempfile.TemporaryFile() as out,
        run_process(
            [*args, "--simulators", "auto"],
            f"http://127.0.0.1:{port}/readyz",
            timeout=20,
            output=out,
            env=env,
        ),
    ):
        out.seek(0)
        banner = out.read().decode()
        assert "legacy: built-in simulated provider" in banner
        python = re.search(r'\.venv/bin/python -c "(.+)"', banner)
        assert python is not None, banner
        result = subprocess.run(
            [sys.executable, "-c", python.group(1)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(
            r"(legacy|relay) -> Hello from \1! This is a simulated reply\.\n", result.stdout
        )
        if shutil.which("curl"):
            curl = re.search(r"(curl -si .+?\\\n.+)\n", banner)
            assert curl is not None, banner
            result = subprocess.run(
                curl.group(1).replace("\\\n", " "),
                shell=True,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert "HTTP/1.1 200" in result.stdout
            assert "x-canary-backend:" in result.stdout
    # The router stopped cleanly, so it stopped the simulators it started.
    for sim_port in (legacy, relay):
        wait_until(lambda p=sim_port: not _listening(p), 10, f"simulator on {sim_port} stopped")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


LONG_BACKEND = "anthropic-relay-production-eu-west-1-primary"
LONG_MODEL = "claude-3-5-sonnet-20241022-with-a-long-deployment-suffix"


def test_status_and_report_through_a_pipe_keep_long_names_whole(tmp_path: Path) -> None:
    """`canary status` and `canary report` written to a pipe print every name whole: rich
    would assume 80 columns there and cut them (``anthro…``, ``claude-…``)."""
    sim_port, port = free_port(), free_port()
    config = tmp_path / "routes.yaml"
    config.write_text(
        f"backends:\n  {LONG_BACKEND}:\n    base_url: http://127.0.0.1:{sim_port}/v1\n"
        f"routes:\n  - name: everything-for-the-eu-west-tenants\n"
        f"    weights: {{{LONG_BACKEND}: 100}}\n"
        f"pricing:\n  {LONG_BACKEND}: {{{LONG_MODEL}: {{input: 3.0, output: 15.0}}}}\n"
    )
    args = [sys.executable, "-m", "canary", "serve", "-c", str(config), "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with (
        simulator(sim_port, "long"),
        run_process([*args, "--no-watch"], f"{url}/readyz"),
    ):
        body = {"model": LONG_MODEL, "messages": [{"role": "user", "content": "hi there"}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 200
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
        for verb in ("status", "report"):
            result = subprocess.run(
                [sys.executable, "-m", "canary", verb, "--url", url],
                capture_output=True,
                text=True,
                timeout=30,
                env=env,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert "…" not in result.stdout, result.stdout
            assert LONG_BACKEND in result.stdout, result.stdout
            if verb == "report":
                assert LONG_MODEL in result.stdout, result.stdout
            else:
                assert "everything-for-the-eu-west-tenants" in result.stdout, result.stdout


# --- canary check --probe, against real simulators ---------------------------------------

PROBE_LEGACY_KEY = "sk-legacy-PROBE-e2e-RIGHT-7d7d"
PROBE_WRONG_KEY = "sk-legacy-PROBE-e2e-WRONG-8e8e"
PROBE_RELAY_KEY = "sk-relay-PROBE-e2e-9f9f"
PROBE_ROUTES = """
backends:
  legacy:
    base_url: http://127.0.0.1:{legacy}/v1
    api_key: ${{LEGACY_API_KEY}}
  relay:
    base_url: http://127.0.0.1:{relay}/v1
    api_key: ${{RELAY_API_KEY}}
    api_key_header: x-api-key
    model_map: {{gpt-4.1: relay-4.1}}
routes:
  - name: chat
    match: {{models: [gpt-4.1, gpt-4.1-mini]}}
    weights: {{legacy: 90, relay: 10}}
"""


@pytest.fixture(scope="module")
def keyed_sims() -> Iterator[tuple[int, int]]:
    """Two simulators that answer 401 to any key but their own."""
    ports = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        keys = (PROBE_LEGACY_KEY, PROBE_RELAY_KEY)
        for port, name, key in zip(ports, ("legacy", "relay"), keys, strict=True):
            args = [sys.executable, "-m", "canary", "simulate", "--port", str(port)]
            args += ["--name", name, "--api-key", key]
            stack.enter_context(run_process(args, f"http://127.0.0.1:{port}/_sim/stats"))
        yield ports


def probe(config: Path, legacy_key: str) -> subprocess.CompletedProcess[str]:
    """``canary check --probe``, its table as wide as a row needs (no terminal to size it:
    rich would wrap a row at 80 columns)."""
    env = {**os.environ, "LEGACY_API_KEY": legacy_key, "RELAY_API_KEY": PROBE_RELAY_KEY,
           "COLUMNS": "200"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "canary", "check", "--probe", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env,
        check=False,
    )


def row(output: str, backend: str) -> str:
    """``backend``'s row of the probe table (not of the routing table above it)."""
    table = output.split("backends probed", 1)[1]
    return next(line for line in table.splitlines() if line.strip().startswith(backend + " "))


def assert_no_key(result: subprocess.CompletedProcess[str]) -> None:
    both = result.stdout + result.stderr
    for key in (PROBE_LEGACY_KEY, PROBE_WRONG_KEY, PROBE_RELAY_KEY):
        assert key not in both
        assert key.rsplit("-", 1)[-1] not in both  # not even its tail


def test_probe_with_the_right_keys_is_exit_0_and_names_an_unlisted_model(
    keyed_sims: tuple[int, int], tmp_path: Path
) -> None:
    """Both simulators take their keys (Bearer and x-api-key): exit 0; relay is asked for
    relay-4.1 (gpt-4.1 after its model_map), which its /models does not list."""
    config = tmp_path / "routes.yaml"
    config.write_text(PROBE_ROUTES.format(legacy=keyed_sims[0], relay=keyed_sims[1]))
    result = probe(config, PROBE_LEGACY_KEY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout
    legacy, relay = row(result.stdout, "legacy"), row(result.stdout, "relay")
    assert "200 OK" in legacy and "none (2 listed)" in legacy
    assert f"http://127.0.0.1:{keyed_sims[0]}/v1" in legacy
    assert re.search(r"\d+ ms", legacy)
    assert "200 OK" in relay and "relay-4.1" in relay and "gpt-4.1-mini" not in relay
    assert "1 routed model(s) not listed" in result.stdout
    assert result.stderr == ""  # not a terminal: no spinner
    assert_no_key(result)


def test_probe_with_a_wrong_key_is_exit_1_and_says_refused(
    keyed_sims: tuple[int, int], tmp_path: Path
) -> None:
    """The legacy simulator refuses the key it is given: exit 1, its row says so, and no
    key (the right one, the wrong one, the other backend's) appears anywhere."""
    config = tmp_path / "routes.yaml"
    config.write_text(PROBE_ROUTES.format(legacy=keyed_sims[0], relay=keyed_sims[1]))
    result = probe(config, PROBE_WRONG_KEY)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "401 Unauthorized: key refused" in row(result.stdout, "legacy")
    assert "200 OK" in row(result.stdout, "relay")
    assert "probe failed - key refused: legacy" in result.stdout
    assert_no_key(result)


def test_probe_of_an_unreachable_backend_is_exit_1(
    keyed_sims: tuple[int, int], tmp_path: Path
) -> None:
    """Nothing listens on relay's port: exit 1, "unreachable" with the reason."""
    config = tmp_path / "routes.yaml"
    config.write_text(PROBE_ROUTES.format(legacy=keyed_sims[0], relay=free_port()))
    result = probe(config, PROBE_LEGACY_KEY)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unreachable: Connection refused" in row(result.stdout, "relay")
    assert "probe failed - unreachable: relay" in result.stdout
    assert_no_key(result)


def test_check_without_probe_calls_no_backend(tmp_path: Path) -> None:
    """Plain `canary check` stays offline: backends that are down do not change its answer."""
    config = tmp_path / "routes.yaml"
    config.write_text(PROBE_ROUTES.format(legacy=free_port(), relay=free_port()))
    result = probe_less(config)
    assert result.returncode == 0, result.stderr
    assert "backends probed" not in result.stdout


def probe_less(config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEGACY_API_KEY": "k", "RELAY_API_KEY": "k"}
    return subprocess.run(
        [sys.executable, "-m", "canary", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env,
        check=False,
    )
