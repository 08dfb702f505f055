"""The same-model test's false-alarm rate and power, measured on the simulator's models.

    .venv/bin/python bench/samemodel_power.py [--runs 100] [--prompts K] [--samples N]

In process, no sockets: each run draws the answers ``canary verify --distribution`` would
collect from two simulators (the baseline honest, the relay answering from
``--substitute`` in a share of its calls, at temperature 1, cut at MAX_TOKENS words as
the simulator cuts them), and runs the test. Run ``r`` is seeded with ``r``: the figures
are reproducible. Prints, per substitution share, how often the verdict was ``differs``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from canary.tools.distribution import ALPHA, DEFAULT_PROMPTS, DEFAULT_SAMPLES, MAX_TOKENS
from canary.tools.samemodel import PROMPTS, mmd_test
from canary.tools.simulate.sampling import distribution

ASKED, SUBSTITUTE = "gpt-4.1", "gpt-4o-mini"


def answers(model: str, prompt: str, n: int, rng: random.Random, share: float = 0.0) -> list[str]:
    out = []
    for _ in range(n):
        drawn = SUBSTITUTE if share and rng.random() < share else model
        out.append(" ".join(distribution(drawn, prompt).sample(1.0, rng)[:MAX_TOKENS]))
    return out


def flagged(run: int, share: float, k: int, n: int, alpha: float) -> bool:
    rng = random.Random(run)
    prompts = PROMPTS[:k]
    base = [answers(ASKED, p, n, rng) for p in prompts]
    relay = [answers(ASKED, p, n, rng, share) for p in prompts]
    return mmd_test(base, relay, rng=rng).p_value < alpha


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=DEFAULT_PROMPTS)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--shares", default="0,1,0.5,0.2")
    args = parser.parse_args()
    print(f"K={args.prompts} N={args.samples} alpha={args.alpha} runs={args.runs}")
    for share in (float(s) for s in args.shares.split(",")):
        began = time.perf_counter()
        hits = sum(
            flagged(r, share, args.prompts, args.samples, args.alpha) for r in range(args.runs)
        )
        seconds = time.perf_counter() - began
        what = "false alarms (honest)" if share == 0 else f"caught at {share:.0%} substitution"
        print(f"  {what}: {hits}/{args.runs}  ({seconds:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
