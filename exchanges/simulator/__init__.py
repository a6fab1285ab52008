"""A local, wire-compatible stand-in for Binance USD-M futures (and Bybit v5 linear (protocol layers over one engine)).

Run it with ``python -m exchanges.simulator --host 127.0.0.1 --port 9100``; the real
``python-binance`` client works against it unchanged once its base URLs point here.

Layout:
- ``models``, ``engine``, ``margin``: the protocol-neutral matching engine, accounts
  and positions (Decimal, ms times, events published to listeners);
- ``legs``: held conditional orders (stop-loss, take-profit, trailing stop) triggered
  by the mark or last price, liquidation/ADL closes, margin calls and funding;
- ``market``: seeded random walk and CSV candle replay;
- ``faults``: fault injection, the server clock, REST request counters;
- ``binance_*``: the Binance REST + WebSocket protocol layer (``binance_algo``: the
  Algo Service, ALGO_UPDATE, MARGIN_CALL, income history);
- ``bybit_*``: the Bybit v5 layer (``bybit_tpsl``: position trading-stop and its
  conditional orders);
- ``control``: the loopback-only ``/_sim/*`` API for demos and tests;
- ``server``: assembly (``build_app``, ``serve``) and ``__main__``: the command line.
"""
