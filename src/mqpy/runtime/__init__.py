"""Running the broker: `server` composes the parts into one process, `supervisor`
runs several, `stopping` turns signals into a graceful stop, `logging_setup` formats
the log."""
