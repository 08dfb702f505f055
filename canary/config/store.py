"""Keep the last good routes.yaml serving; swap one reference when a new one validates.

Triggers: a change on disk (polled), SIGHUP, ``POST /admin/reload``. Every trigger runs
``ConfigStore.reload``; a file that fails validation is not applied (a bad edit must not
take traffic down), its error is kept for ``/status`` until a later good load clears it.
Requests read ``store.config`` once when they start, so a swap is atomic for them.

Watching polls ``os.stat`` (following symlinks) rather than inotify: editors save by
writing a new file and renaming it over the old one, and Kubernetes updates a ConfigMap
by swapping a ``..data`` symlink; both change the followed inode, which a stat sees and
an inotify watch on the old file does not. Polling every 250 ms costs one syscall.
A changed stat with unchanged bytes (``touch``) is not a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from canary.config.loader import load_config
from canary.config.model import Config
from canary.errors import ConfigError, ConfigProblem

log = structlog.get_logger("canary.config.store")

PARSE_TIMEOUT_S = 5.0

Listener = Callable[[Config | None, Config], None]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    applied: bool
    changed: bool
    version: str | None
    error: str | None


def _signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigStore:
    """The current (last good) config and the last reload error."""

    def __init__(self, path: str, *, loader: Callable[[str], Config] = load_config) -> None:
        self.path = path
        self._loader = loader
        self.config: Config | None = None
        self.error: str | None = None
        self.error_at: datetime | None = None
        self.listeners: list[Listener] = []
        self._signature = _signature(path)
        self._lock = asyncio.Lock()

    def load_initial(self) -> None:
        """First load at start-up; a bad file leaves ``config`` None (``/readyz`` says 503)."""
        self._signature = _signature(self.path)
        self._apply_or_keep(self._parse())

    def _parse(self) -> Config | ConfigError:
        try:
            return self._loader(self.path)
        except ConfigError as exc:
            return exc
        except Exception as exc:  # a loader bug must not stop reloads: report it as a problem
            return ConfigError([ConfigProblem(self.path, None, "", f"{type(exc).__name__}: {exc}")])

    def _apply_or_keep(self, outcome: Config | ConfigError) -> ReloadResult:
        if isinstance(outcome, ConfigError):
            self.error = str(outcome)
            self.error_at = datetime.now(UTC)
            log.error(
                "config.rejected", path=self.path, problems=[str(p) for p in outcome.problems]
            )
            version = self.config.version if self.config else None
            return ReloadResult(applied=False, changed=False, version=version, error=self.error)
        old = self.config
        self.error = self.error_at = None
        if old is not None and old.version == outcome.version:
            return ReloadResult(applied=True, changed=False, version=old.version, error=None)
        self.config = outcome
        for listener in self.listeners:
            listener(old, outcome)
        log.info(
            "config.applied",
            path=self.path,
            version=outcome.version[:12],
            routes=len(outcome.routes),
            backends=sorted(outcome.backends),
        )
        return ReloadResult(applied=True, changed=True, version=outcome.version, error=None)

    async def reload(self, *, reason: str) -> ReloadResult:
        """Re-read the file off the event loop, with a time bound; apply it if it validates."""
        async with self._lock:
            self._signature = _signature(self.path)
            log.debug("config.reloading", reason=reason)
            try:
                outcome = await asyncio.wait_for(asyncio.to_thread(self._parse), PARSE_TIMEOUT_S)
            except TimeoutError:
                outcome = ConfigError(
                    [
                        ConfigProblem(
                            self.path, None, "", f"parsing took longer than {PARSE_TIMEOUT_S:g} s"
                        )
                    ]
                )
            return self._apply_or_keep(outcome)

    def changed_on_disk(self) -> bool:
        return _signature(self.path) != self._signature

    async def watch(self, interval_s: float = 0.25) -> None:
        """Poll the file until cancelled; reload whenever its followed stat changes."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self.changed_on_disk():
                    await self.reload(reason="file changed")
            except Exception as exc:  # live reload must outlive any one bad file
                log.error("config.watch_failed", error=type(exc).__name__)

    @contextlib.asynccontextmanager
    async def watching(self, interval_s: float = 0.25) -> AsyncIterator[None]:
        """``watch`` in a background task while the block runs (the app's lifespan)."""
        task = asyncio.get_running_loop().create_task(self.watch(interval_s))
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
