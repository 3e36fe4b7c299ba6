"""Registry watcher: MLflow alias changes (signed webhooks + a poller as safety net) -> AliasChanged.

Follow one alias change: `entrypoints/http.py` (webhook in) -> `domain/webhook.py` (parse) ->
`handlers.py` (the use case) -> `adapters/alias_state.py` (Redis compare-and-set + outbox) ->
`adapters/outbox.py` (Kafka, acks=all). `entrypoints/poller.py` feeds the same use case from MLflow's
current aliases; `bootstrap.py` wires it all.
"""
