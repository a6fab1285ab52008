#!/bin/sh
# Several server processes behind nginx, in the foreground, stopped by Ctrl-C
# (README "Deploy"; `make deploy` runs this). Loads ./.env when it exists, installs
# nginx from Debian's packages when /usr/sbin/nginx is missing, then runs
# `python -m deploy` (migrations, P processes, nginx; see deploy/__main__.py).
#   P=2 LISTEN=127.0.0.1:8080 BASE_PORT=5001 sh scripts/deploy.sh [python -m deploy options]
set -eu
cd "$(dirname "$0")/.."
if [ -f ./.env ]; then
    set -a; . ./.env; set +a
fi
REQUIRE_NGINX=1 sh scripts/install-nginx.sh
exec "${VENV:-.venv}/bin/python" -m deploy "$@"
