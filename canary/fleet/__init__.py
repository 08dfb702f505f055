"""State shared by the workers of one server and by replicas: Redis shared state, the
workers' exchange through a private directory, membership and heartbeat."""
