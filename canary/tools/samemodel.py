"""The same-model test: are two backends' sampled answers drawn from one distribution?

A relay can name the asked model and bill the same tokens while serving a cheaper one;
only its answers' distribution gives it away (SPEC §9). This is the test of "Model
Equality Testing" (Gao, Liang, Guestrin, ICLR 2025): the maximum mean discrepancy (MMD)
between the two samples under a kernel that compares answers to the *same prompt* only,
by the Hamming similarity of their first ``PREFIX_CHARS`` characters (padded, so an answer
that ends early differs from one that goes on). The statistic is the unbiased MMD² per
prompt, averaged over the prompts; its p-value comes from ``PERMUTATIONS`` random
relabellings within each prompt (exact under the null: the two backends' answers to one
prompt are exchangeable when they sample one model). ``verdict`` is ``differs`` when
p < alpha.

One deviation from the paper, for a balanced budget: it draws prompts at random with one
answer each; here every prompt gets ``samples`` answers from each backend (answers to
different prompts never meet in the kernel, so this changes the weighting, not the test).

Why the computation is cheap: per prompt the 2n x 2n Gram matrix of match counts is built
once; a relabelling then only needs C, the similarity summed across the two halves,
because the within-halves sums add up to the (fixed) total minus 2C. The p-value is made
independent of the order of prompts, of answers and of the two samples by putting each
prompt's pooled answers, and the prompts, in a canonical order before relabelling.

Where the feature lives (issue #21):

- here: the prompts, the statistic and its p-value (pure, no I/O);
- ``canary.tools.distribution``: the verb, ``canary verify --distribution`` (budget,
  sampling within the backends' limits, progress, output, and ``<config>.verify.json``,
  the record the dashboard reads);
- ``canary.tools.verify``: the temperature-0 answers compared across the backends (a row);
- ``canary.safety.equivalence``: the shadow pairs' paired test (``same_model_p``: signed
  rank on answer lengths, a different test, cheap enough for ``/status``), and
  ``canary.observe.equivalence``: its readiness bar, ``min_same_model_p``, in words;
- ``canary.tools.simulate.sampling``: the simulator's per-(model, prompt) answers and the
  forging relay; ``canary.tools.demo.forgery``: the demo;
- ``bench/samemodel_power.py``: the measured false-alarm rate and power behind the
  defaults (docs/same-model.md).

Nothing here is imported by the router.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX_CHARS = 128  # L: the characters of each answer the kernel compares
PERMUTATIONS = 1000  # relabellings behind each p-value (its resolution is 1 / 1001)
PAD = "\0"  # after an answer's end; two answers both ended there match

# Short continuations with many plausible answers (high entropy at temperature 1), each
# answerable in a few words, so MAX_TOKENS keeps the cost small.
PROMPTS: tuple[str, ...] = (
    "Continue this list of random words: lantern, orbit, velvet,",
    "Name an animal, a colour and a city, at random.",
    "Write the first line of a poem about a harbour at night.",
    "Give a made-up name for a new spice blend.",
    "Finish the sentence: The old clockmaker opened the drawer and found",
    "Invent a title for a mystery novel set on a train.",
    "Say three words that come to mind after 'winter'.",
    "Describe the taste of an imaginary fruit in one sentence.",
    "Write a short band name that sounds like it plays jazz.",
    "Continue: Once, on a quiet island, a fisherman",
    "Suggest a name for a friendly robot.",
    "Give one unusual hobby and say why someone might enjoy it.",
    "Write a six-word story about a lost key.",
    "Name a fictional planet and its most famous export.",
    "Continue the story: The letter arrived a day late, and",
    "Make up a proverb about patience.",
    "Pick a random number between 1 and 1000 and a random word.",
    "Write the opening line of a letter to a future self.",
    "Name a dish that could be served at a dragon's birthday.",
    "Invent a word and give its meaning.",
    "Continue: Under the bridge, the children discovered",
    "Write a haiku's first line about rain on a tin roof.",
    "Describe a sunrise in exactly five words.",
    "Give a nickname to a very slow cat.",
    "Name a colour that does not exist and describe it briefly.",
    "Continue: The museum closed at six, but the statue",
    "Suggest a motto for a small bakery.",
    "Write a tongue twister about a purple penguin.",
    "Name three things you might find in an attic.",
    "Invent a holiday and say how it is celebrated.",
    "Continue: At the edge of the desert stood a",
    "Give a short weather forecast for an imaginary city.",
    "Write a compliment a tree might give a river.",
    "Name a ship and its first destination.",
    "Continue: She tuned the radio and heard",
    "Make up the name of a board game and its goal.",
    "Write a riddle whose answer is 'shadow'.",
    "Describe a door to another world in one sentence.",
    "Give a random street name and a house number.",
    "Continue: The map had one place marked in red:",
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The test's result: the statistic, its p-value, and what it rested on."""

    statistic: float  # the unbiased MMD², averaged over prompts (about 0 under the null)
    p_value: float
    permutations: int
    prompts: int  # prompts with at least 2 answers from each side
    samples: int  # answers per prompt and side (the fewest any used prompt had)


def padded(answer: str, prefix: int = PREFIX_CHARS) -> str:
    """The answer's first ``prefix`` characters, padded to exactly ``prefix``."""
    return answer[:prefix].ljust(prefix, PAD)


def hamming(a: str, b: str) -> int:
    """Positions where two padded answers hold the same character (the kernel, times L)."""
    return sum(map(operator.eq, a, b))


@dataclass(frozen=True, slots=True)
class _Prompt:
    gram: tuple[tuple[int, ...], ...]  # match counts of the pooled 2n answers
    total: int  # the Gram matrix's off-diagonal sum
    n: int  # answers per side

    def cross(self, first: Sequence[int]) -> int:
        """C: similarity summed between the answers in ``first`` and the rest."""
        chosen = set(first)
        rest = [j for j in range(2 * self.n) if j not in chosen]
        if len(rest) == 1:
            return sum(self.gram[i][rest[0]] for i in first)
        pick = operator.itemgetter(*rest)
        return sum(sum(pick(self.gram[i])) for i in first)

    def mmd(self, cross: int, prefix: int) -> float:
        """The unbiased MMD² of the split whose cross similarity is ``cross``."""
        n = self.n
        return ((self.total - 2 * cross) / (n * (n - 1)) - 2 * cross / (n * n)) / prefix


def _prepare(first: Sequence[str], second: Sequence[str], prefix: int) -> tuple[_Prompt, int]:
    """One prompt's pooled answers in canonical order, and C of the observed split."""
    n = min(len(first), len(second))
    a = [padded(x, prefix) for x in first[:n]]
    b = [padded(y, prefix) for y in second[:n]]
    pooled = sorted(a + b)
    gram = tuple(tuple(hamming(x, y) for y in pooled) for x in pooled)
    total = sum(map(sum, gram)) - prefix * 2 * n  # each answer matches itself fully
    prompt = _Prompt(gram, total, n)
    # the observed split: the first side's answers, located in the canonical order
    index: dict[str, list[int]] = {}
    for i, text in enumerate(pooled):
        index.setdefault(text, []).append(i)
    observed = [index[text].pop() for text in a]
    return prompt, prompt.cross(observed)


def mmd_test(
    first: Sequence[Sequence[str]],
    second: Sequence[Sequence[str]],
    *,
    rng: random.Random,
    permutations: int = PERMUTATIONS,
    prefix: int = PREFIX_CHARS,
) -> Outcome:
    """The two-sample test over prompts: ``first[k]`` and ``second[k]`` are the two sides'
    answers to prompt k. Each prompt uses as many answers as its smaller side has; a
    prompt with fewer than 2 on a side is left out. ``rng`` draws the relabellings."""
    if permutations < 1 or prefix < 1:
        raise ValueError("permutations and prefix must be at least 1")
    prepared = [
        _prepare(x, y, prefix)
        for x, y in zip(first, second, strict=True)
        if min(len(x), len(y)) >= 2
    ]
    if not prepared:
        raise ValueError("no prompt has 2 answers from each side")
    prepared.sort(key=lambda item: (item[0].n, item[0].gram))  # independent of prompt order
    observed = sum(p.mmd(c, prefix) for p, c in prepared) / len(prepared)
    tolerance = 1e-12 * max(1.0, abs(observed))
    at_least = 0
    for _ in range(permutations):
        total = 0.0
        for p, _c in prepared:
            total += p.mmd(p.cross(rng.sample(range(2 * p.n), p.n)), prefix)
        at_least += total / len(prepared) >= observed - tolerance
    return Outcome(
        statistic=observed,
        p_value=(1 + at_least) / (1 + permutations),
        permutations=permutations,
        prompts=len(prepared),
        samples=min(p.n for p, _ in prepared),
    )
