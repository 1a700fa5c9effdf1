#!/bin/sh
# Runs as `dev` once cloud-init has finished, in /var/tmp/castra/dev; rerun only when this
# file, castra.toml's bootstrap settings or the image change.
set -eu
sudo -n true                       # the seed gave dev passwordless sudo
echo "bootstrapping $CASTRA_VM (run $CASTRA_RUN_ID) on $(. /etc/os-release && echo "$PRETTY_NAME")"
touch ~/.castra-ready
