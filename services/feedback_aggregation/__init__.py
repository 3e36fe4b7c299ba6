"""Feedback aggregation: turns inference and feedback events into windowed counts, training datasets
(immutable, with a SHA-256 manifest) and retraining requests. `core` holds the pure logic."""
