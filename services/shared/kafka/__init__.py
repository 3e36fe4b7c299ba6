"""Kafka adapters: broker profiles, the event publisher, topic administration and consumers."""
