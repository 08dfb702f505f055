"""Reload semantics of ``ConfigStore`` on a real directory: the poll step is called directly."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from canary.config.model import Config
from canary.config.store import ConfigStore

GOOD = """
backends:
  legacy: {{base_url: "http://127.0.0.1:9101/v1"}}
  relay: {{base_url: "http://127.0.0.1:9102/v1"}}
routes:
  - name: chat
    weights: {{legacy: {legacy}, relay: {relay}}}
"""


def good(legacy: int = 90, relay: int = 10) -> str:
    return GOOD.format(legacy=legacy, relay=relay)


def weights(store: ConfigStore) -> dict[str, float]:
    assert store.config is not None
    return dict(store.config.routes[0].weights)


def save_by_rename(path: Path, text: str) -> None:
    """What editors do: write a new file beside it, then rename it over the old one."""
    tmp = path.with_suffix(".swp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def poll(store: ConfigStore) -> bool:
    """One step of the watch loop; True when it reloaded."""
    if store.changed_on_disk():
        await store.reload(reason="file changed")
        return True
    return False


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "routes.yaml"
    p.write_text(good())
    return p


@pytest.fixture
def store(path: Path) -> ConfigStore:
    s = ConfigStore(str(path))
    s.load_initial()
    return s


async def test_rename_save_is_seen_and_applied(store: ConfigStore, path: Path) -> None:
    """A save by rename changes the followed inode, so the next poll applies the new file."""
    assert not await poll(store)
    save_by_rename(path, good(50, 50))
    assert await poll(store)
    assert weights(store) == {"legacy": 50, "relay": 50}


async def test_in_place_write_is_seen(store: ConfigStore, path: Path) -> None:
    """A write into the same file (same inode) is seen through size and mtime."""
    path.write_text(good(1, 99))
    assert await poll(store)
    assert weights(store) == {"legacy": 1, "relay": 99}


async def test_configmap_symlink_swap_is_seen(tmp_path: Path) -> None:
    """Kubernetes swaps a ..data symlink to a new directory; the followed file changes."""
    mount = tmp_path / "mount"
    mount.mkdir()
    (mount / "..2026_11_25_a").mkdir()
    (mount / "..2026_11_25_a" / "routes.yaml").write_text(good())
    os.symlink("..2026_11_25_a", mount / "..data")
    os.symlink("..data/routes.yaml", mount / "routes.yaml")
    store = ConfigStore(str(mount / "routes.yaml"))
    store.load_initial()
    assert weights(store) == {"legacy": 90, "relay": 10}

    (mount / "..2026_11_25_b").mkdir()
    (mount / "..2026_11_25_b" / "routes.yaml").write_text(good(0, 100))
    os.symlink("..2026_11_25_b", mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap kubelet does
    assert await poll(store)
    assert weights(store) == {"legacy": 0, "relay": 100}


async def test_touch_without_a_change_is_not_a_reload(store: ConfigStore, path: Path) -> None:
    """Same bytes, new mtime: the config object and listeners stay untouched."""
    before = store.config
    calls: list[Config] = []
    store.listeners.append(lambda old, new: calls.append(new))
    os.utime(path, ns=(1, 1))
    assert await poll(store)
    assert store.config is before
    assert calls == []


async def test_bad_edit_keeps_the_last_good_config_until_a_good_one(
    store: ConfigStore, path: Path
) -> None:
    """An invalid save is reported and not applied; the next valid save clears the error."""
    before = store.config
    save_by_rename(path, good().replace("relay: 10", "relay: -10"))
    assert await poll(store)
    assert store.config is before
    assert store.error is not None
    assert "routes[0].weights.relay: must be >= 0" in store.error
    assert store.error_at is not None

    save_by_rename(path, good(70, 30))
    assert await poll(store)
    assert store.error is None
    assert weights(store) == {"legacy": 70, "relay": 30}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe routes", id="not-utf8"),
        pytest.param(b"backends: [", id="bad-yaml"),
        pytest.param(b"- just\n- a list\n", id="not-a-mapping"),
    ],
)
async def test_unusable_files_are_rejected(store: ConfigStore, path: Path, content: bytes) -> None:
    """Empty, non-UTF-8, broken or wrongly shaped files never replace the config."""
    before = store.config
    path.write_bytes(content)
    result = await store.reload(reason="test")
    assert not result.applied
    assert store.config is before
    assert store.error


async def test_missing_file_keeps_serving_and_recovers(store: ConfigStore, path: Path) -> None:
    """A deleted file is an error on /status; when it comes back it is applied."""
    path.unlink()
    assert await poll(store)
    assert store.config is not None
    assert store.error is not None and "cannot read" in store.error
    path.write_text(good(20, 80))
    assert await poll(store)
    assert store.error is None
    assert weights(store) == {"legacy": 20, "relay": 80}


async def test_listeners_see_old_and_new(store: ConfigStore, path: Path) -> None:
    """Listeners get both configs on an applied change (breakers re-arm from this)."""
    seen: list[tuple[Config | None, Config]] = []
    store.listeners.append(lambda old, new: seen.append((old, new)))
    old = store.config
    save_by_rename(path, good(80, 20))
    await poll(store)
    assert len(seen) == 1
    assert seen[0][0] is old and seen[0][1] is store.config


async def test_watch_loop_applies_a_save(store: ConfigStore, path: Path) -> None:
    """The running watch task picks up a save by itself (bounded wait, no fixed sleep)."""
    task = asyncio.create_task(store.watch(interval_s=0.01))
    try:
        save_by_rename(path, good(10, 90))
        async with asyncio.timeout(5):
            while weights(store) != {"legacy": 10, "relay": 90}:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_bad_file_at_start_leaves_no_config(tmp_path: Path) -> None:
    """Start-up with an invalid file: no config (readyz 503) and the error kept."""
    p = tmp_path / "routes.yaml"
    p.write_text("routes: 3\n")
    store = ConfigStore(str(p))
    store.load_initial()
    assert store.config is None
    assert store.error is not None and "routes" in store.error


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("routes: 2024-02-30\n", id="impossible-date"),
        pytest.param("backends: {legacy: {max_qps: " + "9" * 400 + "}}\n", id="huge-integer"),
    ],
)
async def test_values_yaml_cannot_construct_are_located_errors(
    store: ConfigStore, path: Path, text: str
) -> None:
    """A value PyYAML fails to build is reported like any problem, and reloads go on."""
    before = store.config
    path.write_text(text)
    result = await store.reload(reason="test")
    assert not result.applied and store.config is before
    assert store.error is not None and "routes.yaml" in store.error
    save_by_rename(path, good(60, 40))
    assert await poll(store)
    assert weights(store) == {"legacy": 60, "relay": 40}
