"""Built-in destinations: where the delivery worker sends outbox rows (``http``, ``file``)."""
