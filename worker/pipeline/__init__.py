"""One request, end to end (`core.Pipeline.handle`), and the per-tenant spend limits it keeps
(`spend`)."""
