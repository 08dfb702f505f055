"""The ``canary`` command as a user runs it: check, and serve with built-in simulators."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, canary, free_port, run_process, simulator, wait_until

pytestmark = pytest.mark.e2e


def test_check_prints_the_routing_table_for_the_example_config() -> None:
    """The shipped routes.yaml is valid; check prints routes in match order and exits 0."""
    result = canary("check", "-c", "routes.yaml")
    assert result.returncode == 0, result.stderr
    assert "1. chat" in result.stdout and "2. default" in result.stdout
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
