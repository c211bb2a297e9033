"""The HTTP API: the seed protocol and the native /v1 routes, errors as problem+json."""
