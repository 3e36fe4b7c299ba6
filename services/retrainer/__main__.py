from services.retrainer.main import run

run()
