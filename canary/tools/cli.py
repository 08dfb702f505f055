"""canary: serve, check, status, report, load, simulate and demo (an LLM canary router).

``canary serve --simulators auto`` (what ``make run`` uses) starts a built-in simulated
provider for every backend whose ``base_url`` is on this machine and not answering yet,
so a newcomer can try the router with no provider and no keys
(``canary.tools.serve_command``).

Each verb imports what it needs when it runs (and its arguments when it is the verb on
the command line), so ``canary status`` or a simulator starts without loading the router.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from canary import __version__

if TYPE_CHECKING:
    from canary.config.model import Config


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    from canary.serve.drain import DEFAULT_GRACE_S, DEFAULT_TIMEOUT_S

    p.add_argument(
        "-c",
        "--config",
        default=os.environ.get("CANARY_CONFIG") or "routes.yaml",
        help="routes file (default: $CANARY_CONFIG, else routes.yaml)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument(
        "--workers",
        type=int,
        default=os.environ.get("CANARY_WORKERS") or "1",
        help="worker processes sharing the port (default: $CANARY_WORKERS, else 1)",
    )
    p.add_argument(
        "--drain-grace-s",
        type=_seconds,
        default=None,
        help="after SIGTERM, keep accepting this long while /readyz says 503 (default: "
        f"{DEFAULT_GRACE_S:g} s, 0 on a loopback --host)",
    )
    p.add_argument(
        "--drain-timeout-s",
        type=_seconds,
        default=None,
        help="after SIGTERM, cut calls still running after this long (default: "
        f"server.drain_timeout_s of routes.yaml, else {DEFAULT_TIMEOUT_S:g} s)",
    )
    p.add_argument(
        "--simulators",
        choices=("auto", "off"),
        default="off",
        help="auto: start a simulated provider for each local backend that is not up",
    )
    p.add_argument("--no-access-log", action="store_true", help="no log line per request")
    p.add_argument(
        "--no-watch", action="store_true", help="reload only on SIGHUP or POST /admin/reload"
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")


def _check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default="routes.yaml")
    p.add_argument(
        "--probe",
        action="store_true",
        help="also GET {base_url}/models of each backend with its key (10 s bound): "
        "exit 1 when one is unreachable or refuses its key",
    )


def _verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default="routes.yaml")
    p.add_argument("--backend", default=None, help="the canary (default: the weighted one)")
    p.add_argument("--against", default=None, help="its baseline (default: the route's)")
    p.add_argument("--model", default="gpt-4.1", help="the model asked for (before model_map)")
    p.add_argument("--max-usd", type=float, default=0.50, help="refuse above this estimate")
    p.add_argument("--json", action="store_true", help="the comparison as JSON")
    p.add_argument(
        "--url", default=None, help="the router told what verify spent (default: $CANARY_URL)"
    )
    p.add_argument("--token", default=None, help="its admin token (default: $CANARY_ADMIN_TOKEN)")
    same = p.add_argument_group("the same-model test (--distribution)")
    same.add_argument(
        "--distribution",
        action="store_true",
        help="sample both backends at temperature 1 and test whether one model answers",
    )
    same.add_argument("--prompts", type=int, default=None, help="K prompts (default 10)")
    same.add_argument("--samples", type=int, default=None, help="N answers per prompt (default 20)")
    same.add_argument("--alpha", type=float, default=None, help="differs below this p (0.01)")
    same.add_argument("--concurrency", type=int, default=None, help="calls in flight per backend")
    same.add_argument("--seed", type=int, default=None, help="seed of the relabelling draws")


def _config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "what",
        choices=("schema", "reference"),
        help="schema: the JSON Schema of routes.yaml; reference: its reference page (markdown)",
    )


def _simulate_arguments(p: argparse.ArgumentParser) -> None:
    from canary.tools.simulate import add_simulate_arguments

    add_simulate_arguments(p)


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    from canary.tools.demo import add_demo_arguments

    add_demo_arguments(p)


def _load_arguments(p: argparse.ArgumentParser) -> None:
    from canary.tools.ops import add_load_arguments

    add_load_arguments(p)


def _rollout_arguments(p: argparse.ArgumentParser) -> None:
    from canary.tools.rollout import add_arguments

    add_arguments(p)


def _url_arguments(p: argparse.ArgumentParser) -> None:
    from canary.tools.ops import add_url_arguments

    add_url_arguments(p)


_VERBS = {
    "serve": ("run the router", _serve_arguments),
    "check": (
        "validate routes.yaml and print the routing table; --probe: call each backend",
        _check_arguments,
    ),
    "config": ("print the JSON Schema (or reference page) of routes.yaml", _config_arguments),
    "status": ("render the router's /status for a person", _url_arguments),
    "rollout": (
        "watch and steer a progressive rollout (status|promote|pause|resume|abort)",
        _rollout_arguments,
    ),
    "report": ("tokens, cost per backend, projected savings", _url_arguments),
    "load": ("open-loop load at a fixed rate (the pre-migration audit)", _load_arguments),
    "verify": (
        "the relay check: a budgeted battery of probe calls to both backends, compared",
        _verify_arguments,
    ),
    "simulate": ("a fake OpenAI and Anthropic provider with fault injection", _simulate_arguments),
    "demo": ("simulators + router + load: watch a canary rolled back live", _demo_arguments),
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``verb``, only that verb's arguments are loaded.

    ``serve`` takes its config and workers from the environment (``CANARY_CONFIG``,
    ``CANARY_WORKERS``) when not given, as containers set them."""
    parser = argparse.ArgumentParser(prog="canary", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"canary {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (text, add_arguments) in _VERBS.items():
        p = verbs.add_parser(name, help=text)
        if verb is None or verb == name:
            add_arguments(p)
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, not {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(verb if verb in _VERBS else None).parse_args(argv)
    if args.verb in ("load", "status", "report"):
        from canary.tools import ops

        run = {"load": ops.run_load_command, "status": ops.run_status, "report": ops.run_report}
        return run[args.verb](args)
    if args.verb == "rollout":
        from canary.tools.rollout import run as run_rollout

        return run_rollout(args)
    if args.verb == "serve":
        from canary.tools.serve_command import run_serve

        return run_serve(args)
    if args.verb == "check":
        return _check(args.config, probe=args.probe)
    if args.verb == "verify":
        return _verify(args)
    if args.verb == "demo" and args.scenario == "forgery":
        from canary.tools.demo.forgery import run_forgery_demo

        return run_forgery_demo()
    if args.verb == "config":
        return _config(args.what)
    if args.verb == "demo" and args.scenario == "rollout":
        from canary.tools.demo.rollout import run_rollout_demo

        return run_rollout_demo()
    if args.verb == "demo":
        from canary.tools.demo import run_demo

        return run_demo(args)
    from canary.tools.simulate import run_simulate

    return run_simulate(args)


def _load(path: str) -> Config | None:
    """The config at ``path``, or None after printing every located problem."""
    from canary.config.loader import load_config
    from canary.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _config(what: str) -> int:
    """Print what ``canary.config.schema`` generates from the config model."""
    if what == "schema":
        import json

        from canary.config.schema import routes_schema

        print(json.dumps(routes_schema(), indent=2, ensure_ascii=False))
    else:
        from canary.config.reference import reference

        sys.stdout.write(reference())
    return 0


def _check(path: str, *, probe: bool = False) -> int:
    cfg = _load(path)
    if cfg is None:
        return 1
    print(routing_table(cfg))
    print(f"\n{path} is valid (version {cfg.version[:12]})", flush=True)
    if not probe:
        return 0
    from canary.tools.console import output_console
    from canary.tools.probe import run_probe

    print()
    spinner = output_console(stderr=True) if sys.stderr.isatty() else None
    return run_probe(cfg, output_console(), spinner)


def _verify(args: argparse.Namespace) -> int:
    from canary.tools.console import output_console
    from canary.tools.verify import run_verify

    cfg = _load(args.config)
    if cfg is None:
        return 1
    options = ("prompts", "samples", "alpha", "concurrency", "seed")
    if not args.distribution and any(getattr(args, key) is not None for key in options):
        print(
            "canary verify: --prompts, --samples, --alpha, --concurrency and --seed "
            "need --distribution",
            file=sys.stderr,
        )
        return 2
    if args.distribution:
        from canary.tools import distribution as same

        defaults = {
            "prompts": same.DEFAULT_PROMPTS,
            "samples": same.DEFAULT_SAMPLES,
            "alpha": same.ALPHA,
            "concurrency": same.CONCURRENCY,
        }
        for key, value in defaults.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        return same.run_distribution(cfg, args, output_console(), progress=sys.stderr.isatty())
    return run_verify(cfg, args, output_console(), progress=sys.stderr.isatty())


def routing_table(cfg: Config) -> str:
    """The routes in match order, with their split, baseline and stickiness."""
    from canary.config.model import redact_url

    lines = ["backends:"]
    for b in cfg.backends.values():
        qps = f"{b.max_qps:g}" if b.max_qps else "-"
        facts = [
            "key set" if b.api_key else "no key",
            f"concurrency {b.max_concurrency or '-'}",
            f"qps {qps}",
            f"timeout {b.timeout_s:g} s",
        ]
        if b.model_map:
            facts.append(f"maps {len(b.model_map)} model(s)")
        lines.append(f"  {b.name:<12} {redact_url(b.base_url)}  ({', '.join(facts)})")
    lines.append("routes (first match wins):")
    for i, r in enumerate(cfg.routes):
        m = r.match
        when = []
        if m.paths or m.prefixes:
            shown = sorted(m.paths or ()) + sorted(f"{p}*" for p in m.prefixes)
            when.append("path in " + ", ".join(shown))
        if m.models:
            when.append("model ~ " + ", ".join(m.models))
        when += [f"{k} = {v}" for k, v in m.headers]
        total = sum(r.weights.values())
        split = ", ".join(f"{n} {100 * w / total:.4g}%" for n, w in r.weights.items())
        extra = [f"baseline {r.baseline}"]
        if r.sticky:
            extra.append(f"sticky by {r.sticky}")
        if r.fallback:
            extra.append("fallback on")
        lines.append(f"  {i + 1}. {r.name:<10} when {' and '.join(when) or 'any request'}")
        lines.append(f"     -> {split}  ({'; '.join(extra)})")
    return "\n".join(lines)
