"""``canary simulate``: a fake LLM provider with fault injection, for demos, tests and
benchmarks. It speaks every dialect the router understands (SPEC §3): OpenAI Chat
Completions, Completions, Embeddings and Responses, and Anthropic Messages, each in the
wire shape its official SDK parses, with tool calls and JSON answers where asked.

Design: ``app`` is the one ASGI callable (routing, faults, I/O, the ``/_sim`` control
plane); each dialect is a module of pure builders from a ``Call`` to a ``Reply``
(``chat``, ``embeddings``, ``messages``, ``responses``), sharing ``answer`` (what is
said and what it bills) and ``schema`` (values for tool arguments and JSON answers);
``faults``, ``stats`` and ``asgi`` are the small pieces under the app; ``cli`` wraps it
in uvicorn. Imports go one way: cli -> app -> dialects -> answer -> schema, asgi.
"""

from canary.errors import StreamCut
from canary.tools.simulate.answer import REPLY
from canary.tools.simulate.app import Simulator, create_sim_app
from canary.tools.simulate.cli import add_simulate_arguments, run_simulate
from canary.tools.simulate.faults import Faults

__all__ = [
    "REPLY",
    "Faults",
    "Simulator",
    "StreamCut",
    "add_simulate_arguments",
    "create_sim_app",
    "run_simulate",
]
