from services.cache_invalidation.main import run

run()
