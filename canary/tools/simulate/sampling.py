"""What a simulated model samples: each (model, prompt) has its own answer distribution.

A call that sets ``temperature`` is answered from it: at temperature 0 its mode, above 0 a
draw (the weights raised to ``1 / temperature``, as softmax sampling does). A call that
sets none gets the simulator's fixed reply, as before, so tests and demos reading it keep
working.

The shape, chosen so that models of one family look alike without being the same: an
answer is a few words, each position a choice over ``VOCAB``. The *prompt* fixes, per
position, which words are likely (a Zipf law over a shuffled vocabulary, seeded by the
prompt alone); the *model* perturbs those weights (log-normal, ``SPREAD``) and sets the
answer's typical length (seeded by the model's name alone). Two models therefore
agree on what is plausible and differ in how often they say it, which is what the
same-model test (``canary.tools.samemodel``) must tell apart. Seeds are strings, which
``random.Random`` hashes with SHA-512: the same in every process and on every machine.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
import re
from dataclasses import dataclass

_WORDS = (
    "amber anchor apple arrow autumn badger basket beacon berry blossom bridge bronze "
    "candle canyon castle cedar cherry cinder clover cobalt comet copper coral cotton "
    "crystal dawn delta desert ember falcon feather fern fjord flint forest fossil "
    "garnet glacier granite harbor hazel heron island ivory jasmine juniper lantern "
    "lemon linen lotus maple marble meadow mirror moss nectar nickel oasis orchid "
    "pebble pepper pine quartz raven ribbon river saffron"
)
VOCAB = tuple(_WORDS.split())
POSITIONS = 24  # the longest answer, in words
ZIPF = 1.1  # how fast a position's weights fall with rank
SPREAD = 1.0  # sigma of a model's log-normal perturbation of the prompt's weights
LENGTHS = (7, 12)  # a model's typical answer length, in words, lies in this range
JITTER = 2  # a sampled answer is up to this many words shorter or longer than typical
# A dated or versioned name is the same model: gpt-4.1-2025-04-14 samples as gpt-4.1.
_VERSION = re.compile(r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{3,8}|v\d+(?:\.\d+)*|latest))+$")


@dataclass(frozen=True, slots=True)
class Distribution:
    """One (model, prompt)'s answers: per position, words and their weights."""

    weights: tuple[tuple[float, ...], ...]  # per position, a weight per VOCAB word
    typical: int  # the mode's length in words

    @property
    def mode(self) -> tuple[str, ...]:
        """The temperature-0 answer: the likeliest word at each position."""
        return tuple(
            VOCAB[max(range(len(w)), key=w.__getitem__)] for w in self.weights[: self.typical]
        )

    def sample(self, temperature: float, rng: random.Random) -> tuple[str, ...]:
        """A temperature-``temperature`` answer (``<= 0``: the mode)."""
        if temperature <= 0:
            return self.mode
        size = min(POSITIONS, max(1, self.typical + rng.randint(-JITTER, JITTER)))
        return tuple(_draw(w, temperature, rng) for w in self.weights[:size])


@functools.lru_cache(maxsize=1024)
def distribution(model: str, prompt: str) -> Distribution:
    """The answer distribution of ``model`` on ``prompt`` (cached: it is pure)."""
    shared = random.Random(f"prompt\0{prompt}")
    own = random.Random(f"model\0{model}\0{prompt}")
    positions = []
    for _ in range(POSITIONS):
        ranks = list(range(len(VOCAB)))
        shared.shuffle(ranks)
        positions.append(
            tuple(math.exp(SPREAD * own.gauss(0.0, 1.0)) / (rank + 1) ** ZIPF for rank in ranks)
        )
    low, high = LENGTHS
    typical = random.Random(f"length\0{model}").randint(low, high)
    return Distribution(tuple(positions), typical)


def family(model: str) -> str:
    """The model a name samples as: its date or version suffix aside, case aside."""
    return _VERSION.sub("", model.strip().lower()) or model


def _draw(weights: tuple[float, ...], temperature: float, rng: random.Random) -> str:
    if temperature == 1.0:
        return rng.choices(VOCAB, weights)[0]
    # w ** (1 / t) in log space, scaled by the largest: no overflow at a tiny temperature
    logs = [math.log(w) / temperature for w in weights]
    top = max(logs)
    cumulative, total = [], 0.0
    for value in logs:
        total += math.exp(value - top)
        cumulative.append(total)
    return VOCAB[min(len(VOCAB) - 1, bisect.bisect(cumulative, rng.random() * total))]


def temperature_of(payload: dict[str, object]) -> float | None:
    """The call's ``temperature`` when it sets a number, else None (the fixed reply)."""
    value = payload.get("temperature")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)
