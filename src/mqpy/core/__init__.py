"""The broker core: the rules (who may connect, publish and subscribe, what a receiver
gets), API key management, publish rate limits, and what nodes sharing a store tell
each other. Plain async Python over the store; no HTTP types in or out."""
