# The gateway (which starts its backends) on the default model, as a non-root user.
# Models and the registry live in volumes so that neither is lost with the container.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto proto
COPY face_contract face_contract
COPY backend backend
COPY gateway gateway
COPY gallery gallery
# The project itself, not a package from the index: its dependencies' ranges are in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[backend]' \
    && groupadd --system --gid 10001 face \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app face \
    && mkdir -p /models /data \
    && chown 10001:10001 /models /data
COPY docker/entrypoint.sh /usr/local/bin/face-entrypoint
# Every FACE_* variable of face-gateway and face-models works here (README: Docker).
# On 0.0.0.0 the gateway needs FACE_API_KEYS (it refuses to start without, saying so). A
# container is reached by its service name, pod or node address, so any Host header is
# served: DNS rebinding cannot help a page that lacks a key.
ENV FACE_HOST=0.0.0.0 FACE_PORT=8080 FACE_MODELS_DIR=/models FACE_DATA_DIR=/data \
    FACE_DEFAULT_MODEL=insightface-opencv FACE_ALLOWED_HOSTS=*
VOLUME ["/models", "/data"]
EXPOSE 8080
USER 10001:10001
# python, not curl: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FACE_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["face-entrypoint"]
