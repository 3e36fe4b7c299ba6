"""Cache invalidation: applies AliasChanged events to the alias resolution cache in Redis and tells the
gateway replicas to reload (`services.shared.resolution` is the contract)."""
