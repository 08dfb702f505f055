"""``canary simulate``: the command-line options and the server around the app.

Fault options keep the names of ``Faults`` fields, so the command line, ``/_sim/faults``
and the dataclass say the same thing. uvicorn serves with the provider's keep-alive;
an intentional cut is counted in ``/_sim/stats``, not logged as a crash.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from dataclasses import fields
from typing import Any

import uvicorn

from canary.errors import StreamCut
from canary.serve.signals import stop_signals_return
from canary.tools.simulate.app import Simulator, create_sim_app
from canary.tools.simulate.billing import APIS, SimBilling
from canary.tools.simulate.faults import Faults


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``canary simulate`` options; fault options keep the names of ``Faults`` fields."""
    add = parser.add_argument
    add("--port", type=int, required=True)
    add("--host", default="127.0.0.1")
    add("--name", default="sim", help="sent back in the x-sim-name header and the reply")
    add("--latency-ms", type=float, default=0.0, help="delay before the response headers")
    add("--chunk-delay-ms", type=float, default=0.0, help="delay between SSE chunks")
    add("--error-rate", type=float, default=0.0, help="share of requests failed with --status-code")
    add("--status-code", type=int, default=500, help="status of injected errors (400..599)")
    add("--rate-limit-rate", type=float, default=0.0, help="share of requests answered 429")
    add("--retry-after", type=float, default=1.0, dest="retry_after_s", metavar="SECONDS")
    add("--cut-after", type=int, default=None, help="drop streams after N SSE events")
    add(
        "--truncate-rate",
        type=float,
        default=0.0,
        help="share of JSON answers cut short of their content-length",
    )
    add("--hang", action="store_true", help="accept requests and never answer")
    add("--session-refuse-status", type=int, default=None, help="refuse WebSocket handshakes")
    add("--session-cut-after", type=int, default=None, help="drop sessions after N frames")
    add("--echo-model", default=None, help="name this model in every answer (a substitution)")
    add("--prompt-token-factor", type=float, default=1.0, help="bill prompt tokens times this")
    add("--reply-scale", type=float, default=1.0, help="make the reply this many times as long")
    add("--reply-text", default=None, help="answer with this text instead (another style)")
    add(
        "--substitute-model",
        default=None,
        help="answer calls that set a temperature from this model's distribution (a forgery)",
    )
    add(
        "--substitute-rate",
        type=float,
        default=1.0,
        help="share of those calls answered by --substitute-model (default: 1)",
    )
    add("--seed", type=int, default=None, help="seed for the fault dice")
    add("--billing", choices=APIS, default=None, help="bill calls and serve that billing API")
    add("--balance-usd", type=float, default=100.0, help="the key's starting balance (--billing)")
    add("--bill-factor", type=float, default=1.0, help="bill this many times what usage says")
    add("--price", type=float, default=1.10, help="USD per million tokens billed (--billing)")
    add(
        "--api-key",
        default=None,
        metavar="KEY",
        help="answer 401 to /v1 calls without this key (Bearer, x-api-key or api-key)",
    )


def _billing(args: argparse.Namespace) -> SimBilling | None:
    if args.billing is None:
        return None
    return SimBilling(
        api=args.billing,
        balance_usd=args.balance_usd,
        bill_factor=args.bill_factor,
        price_input=args.price,
        price_output=args.price,
    )


class _QuietCuts(logging.Filter):
    """Drop uvicorn's traceback for an intentional cut; ``/_sim/stats`` counts it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StreamCut))


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, simulator: Simulator) -> None:
        super().__init__(config)
        self._simulator = simulator

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self._simulator.release_hung()  # or hung requests hold graceful shutdown open
        await super().shutdown(sockets)


def run_simulate(args: argparse.Namespace) -> int:
    """Serve the simulator until SIGINT/SIGTERM, then return 0; 2 if a fault is invalid."""
    try:
        faults = Faults(**{field.name: getattr(args, field.name) for field in fields(Faults)})
        billing = _billing(args)
    except ValueError as exc:
        print(f"canary simulate: {exc}", file=sys.stderr)
        return 2
    simulator = create_sim_app(
        faults,
        name=args.name,
        rng=random.Random(args.seed),
        api_key=args.api_key or None,
        billing=billing,
    )
    config = uvicorn.Config(
        simulator,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=75,  # like real providers: longer than the router's pool keep-alive
    )
    quiet, uvicorn_log = _QuietCuts(), logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(quiet)  # after Config(), which configures uvicorn's loggers
    try:
        with stop_signals_return():
            _Server(config, simulator).run()
    finally:
        uvicorn_log.removeFilter(quiet)
    return 0
