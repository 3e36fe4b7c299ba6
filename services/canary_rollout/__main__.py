from services.canary_rollout.main import run

run()
