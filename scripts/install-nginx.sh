#!/bin/sh
# nginx for the multi-process deployment (`make deploy`, scripts/deploy.sh) and its
# end-to-end test (tests/e2e/test_scaleout.py), from Debian's packages (package
# 'nginx': /usr/sbin/nginx). Does nothing when it is already installed. The package's
# own service is not used: scripts/deploy.sh and the test run nginx with a config of
# their own (var/ or a temporary folder), in the foreground, as the user they are.
#
# When the installation fails (no root, no sudo, no apt) this exits 1 under CI=true
# or with REQUIRE_NGINX=1 (make deploy), and otherwise only warns: the scale-out
# tests then skip, saying why.
set -u
if [ -x /usr/sbin/nginx ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "install-nginx: /usr/sbin/nginx missing; installing the Debian package 'nginx'"
# policy-rc.d exit 101: the package's postinst must not start the system nginx on port 80
# (deploy.sh and the tests start their own); the file is removed again afterwards
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=""
if [ ! -e "$POLICY" ] && $SUDO sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod +x $POLICY"; then
    ADDED_POLICY=1
fi
$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y nginx
[ -n "$ADDED_POLICY" ] && $SUDO rm -f "$POLICY"
if [ -x /usr/sbin/nginx ]; then
    exit 0
fi
if [ "${CI:-}" = "true" ] || [ "${REQUIRE_NGINX:-}" = "1" ]; then
    echo "install-nginx: could not install nginx (required here)" >&2
    exit 1
fi
echo "install-nginx: could not install nginx; tests/e2e/test_scaleout.py will be skipped" >&2
exit 0
