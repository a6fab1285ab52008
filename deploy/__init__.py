"""Running several server processes behind nginx (``python -m deploy``, ``make deploy``):
``deploy.nginx`` writes the balancer's configuration and runs nginx, ``deploy.run``
starts and supervises the processes. Used by ``scripts/deploy.sh``, the scale-out
tests (tests/e2e/test_scaleout.py) and ``bench.scaleout``."""
