#!/bin/sh
# Chromium for the browser tests (tests/browser), from Debian's packages.
# Playwright's own browser download (`playwright install`) is not used: the test
# drives /usr/bin/chromium. Does nothing when it is already installed.
#
# When the installation fails (no root, no sudo, no apt) this exits 1 under CI=true
# and otherwise only warns: the browser test then skips, saying why.
set -u
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "install-browser: /usr/bin/chromium missing; installing the Debian package 'chromium'"
if $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium \
        && [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "${CI:-}" = "true" ]; then
    echo "install-browser: could not install chromium (required under CI=true)" >&2
    exit 1
fi
echo "install-browser: could not install chromium; tests/browser will be skipped" >&2
exit 0
