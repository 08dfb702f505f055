"""Where a rollout's state file goes when there is no Redis (SPEC §10).

Beside routes.yaml (``.routes.yaml.rollout.json``), so a restarted router resumes. A
read-only config folder is normal in Kubernetes (a ConfigMap): then it goes to
``$CANARY_STATE_DIR`` or the temporary directory, and the log and ``/status``
(``rollout.saved``) say where, and why. The file is the ``FileStore`` that the workers of
one host share the rollout through (``canary.fleet.rollout_shared``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import structlog

from canary.fleet.rollout_stores import FileStore

log = structlog.get_logger("canary.fleet.rollout")

BESIDE = "beside the config"


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def state_path(config_path: str, writable: Callable[[Path], bool] = _writable) -> tuple[Path, str]:
    """Where the state file goes, and in words why there."""
    config = Path(config_path).resolve()
    beside = config.parent / f".{config.name}.rollout.json"
    if writable(config.parent):
        return beside, BESIDE
    tag = hashlib.sha256(str(config).encode()).hexdigest()[:12]
    folder = Path(os.environ.get("CANARY_STATE_DIR") or tempfile.gettempdir())
    why = f"{config.parent} is not writable (a read-only ConfigMap?)"
    return folder / f"canary-rollout-{tag}.json", why


def file_store(config_path: str) -> FileStore:
    """The state file's store for ``config_path``; logs when it is not beside the config."""
    path, why = state_path(config_path)
    if why != BESIDE:
        log.warning("rollout.state_elsewhere", path=str(path), reason=why)
    return FileStore(path, why)
