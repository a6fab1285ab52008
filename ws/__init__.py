"""Socket.IO: connection handlers and the push hub."""
