"""What both ends of an HTTP exchange with the broker share: delivery signatures
(Standard Webhooks) and reading `Retry-After`. Used by the server and the client SDK
alike, so it imports nothing of either."""
