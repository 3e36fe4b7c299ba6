from services.feedback_aggregation.main import run

run()
