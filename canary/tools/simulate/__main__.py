"""``python -m canary.tools.simulate``: the simulator without the ``canary`` CLI around it."""

import argparse

from canary.tools.simulate.cli import add_simulate_arguments, run_simulate

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="canary simulate", description="A fake LLM provider")
    add_simulate_arguments(parser)
    raise SystemExit(run_simulate(parser.parse_args()))
