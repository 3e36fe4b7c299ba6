"""Retrainer: trains the next version of a model when feedback asks for it (`flywheel.retraining.requested`),
checks it against the quality gates and, only when every gate passes, registers it as `challenger`."""
