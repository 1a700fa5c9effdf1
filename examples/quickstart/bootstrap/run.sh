#!/bin/sh
# Runs in the guest (busybox sh), in remote_dir, with the payload beside it.
set -eu
echo "bootstrapping $CASTRA_VM (run $CASTRA_RUN_ID)"
cp "$CASTRA_PAYLOAD_DIR/motd" ./castra-mark
printf '%s\n' "$GREETING" >> ./castra-mark
echo "left a mark in $(pwd)/castra-mark"
