from services.registry_watcher.bootstrap import run

run()
