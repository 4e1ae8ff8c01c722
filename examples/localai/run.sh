#!/usr/bin/env bash
# The face backend as LocalAI's external gRPC backend `face-service`.
# MODELS: LocalAI's models folder, holding the YAMLs of models/ and their weight files.
set -euo pipefail
MODELS=${MODELS:-$PWD/models}
PORT=${PORT:-50051}
face-backend --addr "127.0.0.1:$PORT" &
backend=$!
trap 'kill "$backend"' EXIT
local-ai run --models-path "$MODELS" --external-grpc-backends "face-service:127.0.0.1:$PORT"
