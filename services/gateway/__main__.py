from services.gateway.bootstrap import run

run()
