"""A rollout's state in a file, so a restarted router resumes it (no Redis: SPEC §10).

The file lives beside routes.yaml (``.routes.yaml.rollout.json``). A read-only config
folder is normal in Kubernetes (a ConfigMap): then it goes to ``$CANARY_STATE_DIR`` or the
temporary directory, and the log and ``/status`` (``rollout.state_file``) say where, and
why. Written atomically (a temporary file, then a rename) on every transition; read once
when serving starts. A state saved for another rollout block is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from canary.safety.rollout import Transition
from canary.safety.rollouts import Rollouts

log = structlog.get_logger("canary.fleet.rollout")


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def state_path(config_path: str, writable: Callable[[Path], bool] = _writable) -> tuple[Path, str]:
    """Where the state file goes, and in words why there."""
    config = Path(config_path).resolve()
    beside = config.parent / f".{config.name}.rollout.json"
    if writable(config.parent):
        return beside, "beside the config"
    tag = hashlib.sha256(str(config).encode()).hexdigest()[:12]
    folder = Path(os.environ.get("CANARY_STATE_DIR") or tempfile.gettempdir())
    why = f"{config.parent} is not writable (a read-only ConfigMap?)"
    return folder / f"canary-rollout-{tag}.json", why


class RolloutFile:
    """Saves every transition of ``rollouts`` to ``path``; ``resume`` reads it back."""

    def __init__(self, rollouts: Rollouts, path: Path, why: str) -> None:
        self.rollouts = rollouts
        self.path = path
        self.why = why

    def resume(self) -> bool:
        saved = self._read()
        resumed = saved is not None and self.rollouts.adopt(saved)
        if resumed:
            m = self.rollouts.machine
            assert m is not None
            log.info("rollout.resumed", path=str(self.path), state=m.state, step=m.step)
        return resumed

    def save(self, _: Transition | None = None) -> None:
        m = self.rollouts.machine
        if m is None:
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(m.export()))
            os.replace(tmp, self.path)
        except OSError as exc:  # serving goes on; a restart would start the rollout over
            self.rollouts.persisted = f"not saved: {exc.strerror or exc}"
            log.error("rollout.state_not_saved", path=str(self.path), error=str(exc))
            return
        self.rollouts.persisted = f"{self.path} ({self.why})"

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("rollout.state_unreadable", path=str(self.path), error=str(exc))
            return None
        return data if isinstance(data, dict) else None


@contextlib.contextmanager
def rollout_file(rollouts: Rollouts, config_path: str) -> Iterator[RolloutFile]:
    """Resume from the file, then save each transition to it while serving."""
    path, why = state_path(config_path)
    store = RolloutFile(rollouts, path, why)
    if why != "beside the config":
        log.warning("rollout.state_elsewhere", path=str(path), reason=why)
    rollouts.persisted = f"{path} ({why})"
    store.resume()
    rollouts.listeners.append(store.save)
    try:
        yield store
    finally:
        rollouts.listeners.remove(store.save)
