"""The simulator suite uses ``sim`` (one process per module), ``new_account`` and
``account`` (a funded SimAccount with a python-binance ``client``) of tests/conftest.py."""
