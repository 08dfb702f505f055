"""Pure routing choice: which route matches a request, and which backend serves it.

No I/O and no globals: ``match_route`` reads the request's path, headers and (lazily)
its model; ``pick`` turns a route's weights, a sticky key and an RNG into a backend.

Weighted choice without a key is a draw from the injected RNG. With a sticky key we
use weighted rendezvous hashing over fixed buckets: the key is hashed into one of
``BUCKETS`` buckets, each (bucket, backend) pair has a fixed score ``-ln(u)`` with
``u`` uniform in (0, 1), and the bucket goes to the backend minimising
``score / weight``. That holds the configured proportions, keeps a key on one backend
for the same weights, and raising one backend's weight lowers only its own ratios, so
keys only ever move onto it, never off it. The hash is BLAKE2b, stable across
processes and replicas (Python's ``hash`` is salted per process).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping
from functools import lru_cache

from canary.config.model import Route
from canary.proxy.body import Body
from canary.proxy.headers import header
from canary.proxy.upload import Upload

BUCKETS = 10_000


def match_route(
    routes: tuple[Route, ...],
    path: str,
    header: Callable[[str], str | None],
    model: Callable[[], str | None],
) -> Route | None:
    """First route whose paths, headers and model glob all match (model read only if needed)."""
    for route in routes:
        m = route.match
        if m.paths is not None and path not in m.paths and not path.startswith(m.prefixes):
            continue
        if any(header(name) != want for name, want in m.headers):
            continue
        if m.model_pattern is not None:
            value = model()
            if value is None or m.model_pattern.match(value) is None:
                continue
        return route
    return None


def sticky_key(route: Route, hdrs: dict[bytes, bytes], body: Body | Upload) -> str | None:
    """The call's sticky key: its ``sticky`` header, or that field of its JSON body."""
    sticky = route.sticky
    if sticky is None:
        return None
    if sticky.source == "header":
        return header(hdrs, sticky.name) or None
    parsed = body.json()
    value = parsed.get(sticky.name) if parsed is not None else None
    return str(value) if value not in (None, "") else None


def pick(weights: Mapping[str, float], key: str | None, rng: random.Random) -> str:
    """A backend name drawn by weight; the same ``key`` always gets the same backend."""
    if key is None:
        total = 0.0
        for w in weights.values():
            total += w
        x = rng.random() * total
        chosen = ""
        for name, w in weights.items():
            if w > 0:
                chosen = name
                x -= w
                if x < 0:
                    break
        return chosen
    bucket = bucket_of(key)
    best, best_ratio = "", math.inf
    for name, w in weights.items():
        if w > 0:
            ratio = _score(name, bucket) / w
            if ratio < best_ratio:
                best, best_ratio = name, ratio
    return best


def bucket_of(key: str) -> int:
    """The fixed bucket of a sticky key."""
    h = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % BUCKETS


@lru_cache(maxsize=8 * BUCKETS)
def _score(backend: str, bucket: int) -> float:
    """Exp(1)-distributed, fixed per (backend, bucket): ``-ln(u)`` for a uniform hash ``u``."""
    h = hashlib.blake2b(f"{backend}\x00{bucket}".encode(), digest_size=8).digest()
    u = (int.from_bytes(h, "big") + 0.5) / 2**64
    return -math.log(u)
