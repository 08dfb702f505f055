"""What keeps a bad canary from hurting users: error windows, the circuit breaker
(pybreaker's state machine), the concurrency and QPS limiters, and readiness."""
