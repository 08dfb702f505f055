"""What an answer or an outcome means for the backend: the one table the exchange and the
WebSocket session (``canary.proxy.session``) both read.

What an answer means for the backend (SPEC §4):

    status        counts against it          falls back (fallback: true)   retried there
    2xx, 3xx      no                         no                            no
    429, 5xx      yes (429 / 5xx)            yes                           429/502/503/504
    401/402/403   yes (key refused, credit   yes                           no
                  spent, account barred)
    credit spent  yes (``credit_spent``: a   yes                           no
                  code in the error body,
                  ``canary.proxy.credit``)
    other 4xx     only when the baseline     yes, once; the client gets    no
                  then answers 2xx           the baseline's answer
                  (``rejected``)

Transport failures count as ``timeout``/``connect``, a stream without its end mark as
``stream_cut``. A client that left, a slow client and a request the router could not
write give no verdict on the backend.
"""

from __future__ import annotations

_FAULTS = {401: "401", 402: "402", 403: "403", 429: "429"}  # statuses that are the backend's
OUTCOME_KIND = {
    "upstream_timeout": "timeout",
    "upstream_error": "connect",
    "stream_cut": "stream_cut",
}
# Outcomes that give no verdict on the backend: its circuit neither passes nor fails them.
NO_VERDICT = frozenset(
    {
        "client_disconnected",
        "cancelled",
        "slow_client",
        "client_timeout",
        "bad_request",
        "internal_error",
    }
)
REFUSED_OUTCOME = {408: "client_timeout", 499: "client_disconnected"}  # else bad_request


def fault_kind(status: int) -> str | None:
    """The failure kind of an upstream answer that is the backend's fault, else None."""
    return "5xx" if status >= 500 else _FAULTS.get(status)
