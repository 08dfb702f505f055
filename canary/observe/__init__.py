"""What the router shows: the meter's plain counters, cost, the /status document, the
Prometheus rendering, logs, and the dashboard with its static files."""
