"""The one shape of "this input is refused": a short reason and a message for people.

The reason is what code and dashboards branch on (a metric label, an MLflow tag, the JSON path of a bad
field, an HTTP error code); the message is what an operator or API user reads. A webhook with a bad
signature, a request input that does not fit the signature, a dataset the retrainer cannot trust: each
service names its own subclass, and all of them print as `reason: message`.
"""

from __future__ import annotations


class Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
