"""The HTTP/1.1 engine under the provider adapters (see http11)."""
