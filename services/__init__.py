"""The application core. Never imports ``api``, ``ws`` or Socket.IO: it publishes
through callables it is given."""
