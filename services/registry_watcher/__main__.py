from services.registry_watcher.main import run

run()
