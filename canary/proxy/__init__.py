"""The data plane, run on every request: the ASGI entry, the per-request exchange and its
send chain, the stream relay, error answers, the router (a pure choice), retries, the
transport and the API dialects. It never imports observe's renderers, serve or tools."""
