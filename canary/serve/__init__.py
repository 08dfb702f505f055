"""The composition root (create_app and its lifespan), the server and its workers, the
drain on SIGTERM, and signal handling."""
