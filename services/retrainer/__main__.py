from services.retrainer.bootstrap import run

run()
