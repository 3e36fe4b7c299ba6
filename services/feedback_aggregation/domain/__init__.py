"""Pure logic of feedback aggregation: windowed counts, training examples, retraining policy. No I/O."""
