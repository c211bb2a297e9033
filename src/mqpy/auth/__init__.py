"""Who is calling: API keys (their format and hashes), the principals they stand for,
and the short-lived tokens that open an event stream. Keys are managed by
`mqpy.core.key_registry`."""
