from services.cache_invalidation.bootstrap import run

run()
