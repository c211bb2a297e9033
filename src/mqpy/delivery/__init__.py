"""Getting messages to receivers: the dispatcher claims, the sender POSTs, the retry
policy decides what a failure means."""
