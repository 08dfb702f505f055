"""The operator's side: the CLI, console rendering, status/report/load, the demo and the
simulated provider. Tools reach a router over HTTP or through the composition root."""
