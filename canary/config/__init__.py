"""routes.yaml -> frozen dataclasses: the model, the loader with env expansion, validation,
and the store that reloads it (keeping the last good config)."""
