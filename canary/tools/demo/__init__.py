"""``canary demo``: two simulators, the router and a steady load; watch a canary rolled back.

The story: traffic is split 50/50 between ``legacy`` (the baseline) and ``relay`` (the
canary). At ``--break-at`` the relay starts answering 503s; its error rate crosses the
threshold, its circuit opens and all traffic goes to legacy while fallback keeps every
client answered. At ``--heal-at`` the relay recovers; after ``open_s`` the circuit
probes, closes and the split returns.

Design: ``story`` (routes, client records, the circuit's timeline), ``view`` (the screen)
and ``summary`` (the verdict) are pure functions of ``/status`` documents and client
``Record`` s; only ``run`` touches processes, sockets and signals. Each imports only
those before it in that list.
"""

from canary.tools.demo.run import Options, add_demo_arguments, run_demo
from canary.tools.demo.story import (
    Record,
    Timeline,
    event_time,
    phase,
    routes_yaml,
    timed_events,
)
from canary.tools.demo.summary import Summary, cost_line, format_summary, summarize
from canary.tools.demo.view import View, error_bar, plain_line, render, view_model

__all__ = [
    "Options",
    "Record",
    "Summary",
    "Timeline",
    "View",
    "add_demo_arguments",
    "cost_line",
    "error_bar",
    "event_time",
    "format_summary",
    "phase",
    "plain_line",
    "render",
    "routes_yaml",
    "run_demo",
    "summarize",
    "timed_events",
    "view_model",
]
