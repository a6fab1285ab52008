"""Exchange layer: one interface, normalised types, typed errors, one package per venue.

Nothing here imports Flask, Socket.IO or the database. The simulator in
``exchanges/simulator`` is a separate process reached only over the network.
"""
