#!/bin/sh
# Container start: install the default model unless it is there, then become the gateway.
# `exec` makes the gateway PID 1, so `docker stop` (SIGTERM) reaches it and it stops cleanly.
# face-models reads FACE_MODELS_MIRROR and FACE_MODELS_ACCEPT_LICENSE itself;
# FACE_MODELS_GALLERY names a custom gallery (offline: file: URLs into a mounted folder).
set -eu
face-models ensure "${FACE_DEFAULT_MODEL:-insightface-opencv}" --models-dir "${FACE_MODELS_DIR:-/models}" \
    ${FACE_MODELS_GALLERY:+--gallery "$FACE_MODELS_GALLERY"}
exec face-gateway "$@"
