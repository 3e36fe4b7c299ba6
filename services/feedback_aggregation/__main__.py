from services.feedback_aggregation.bootstrap import run

run()
