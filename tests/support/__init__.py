"""Reusable test helpers: processes (simulator, server) and their control APIs."""
