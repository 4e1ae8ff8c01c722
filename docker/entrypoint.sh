#!/bin/sh
# Container start: install the default model unless it is there, then become the gateway.
# `exec` makes the gateway PID 1, so `docker stop` (SIGTERM) reaches it and it stops cleanly.
# face-models reads FACE_MODELS_MIRROR, FACE_MODELS_GALLERY and FACE_MODELS_ACCEPT_LICENSE.
set -eu
face-models ensure "${FACE_DEFAULT_MODEL:-insightface-opencv}" --models-dir "${FACE_MODELS_DIR:-/models}"
exec face-gateway "$@"
