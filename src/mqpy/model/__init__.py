"""The vocabulary every part speaks: plain values, the errors, topic names and
patterns, filters, ids, times and the broker's own events. Imports nothing of mq-py
outside this package, and nothing of HTTP or SQL."""
