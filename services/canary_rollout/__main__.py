from services.canary_rollout.bootstrap import run

run()
