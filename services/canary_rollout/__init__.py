"""Canary rollout: moves traffic from the champion to a challenger step by step, compares the two on
error rate, latency and thumbs-up rate, and promotes or rolls back. `core` is the pure decision logic;
the adapters (Faust worker, Redis traffic split, MLflow aliases) execute the commands it returns."""
