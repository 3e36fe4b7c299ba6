"""Pure logic of cache invalidation: which alias change wins. No I/O."""
