"""Offline retraining: outcomes read back from Kafka or Langfuse, the LLM judge (a library the
member's shadow calls use too), and retrain-and-promote."""
