"""Asynchronous requests through the providers' Batch APIs: backends (one interface over OpenAI
Files + Batches and Anthropic Message Batches), durable job state on the compacted batch-jobs
topic, and the job manager the loop hands batch-mode requests to (see `worker.batch.jobs`)."""
