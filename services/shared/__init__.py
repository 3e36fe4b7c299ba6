"""Plumbing written once and shared by every service: settings, Kafka, Redis, MLflow, HTTP, embedded stack."""
