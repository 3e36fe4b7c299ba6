"""Registry watcher: MLflow alias changes (signed webhooks + a poller as safety net) -> AliasChanged.

Follow one alias change: `api.py` (webhook in) -> `core/webhook.py` (parse) -> `recorder.py` (use case)
-> `alias_state.py` (Redis compare-and-set + outbox) -> `outbox.py` (Kafka, acks=all).
`poller.py` feeds the same recorder from MLflow's current aliases.
"""
