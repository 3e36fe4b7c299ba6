"""Flywheel services. Each one has a pure `core`, adapters from `services.shared`, and a thin entrypoint."""
