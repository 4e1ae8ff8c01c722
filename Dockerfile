# The gateway (which starts its backends) on the default model. Models and the registry
# live in volumes so that neither is lost with the container.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto proto
COPY face_contract face_contract
COPY backend backend
COPY gateway gateway
COPY gallery gallery
RUN pip install --no-cache-dir '.[backend]'
ENV FACE_MODELS_DIR=/models FACE_DATA_DIR=/data
VOLUME ["/models", "/data"]
EXPOSE 8080
# Installs insightface-opencv on first start (or takes it from FACE_MODELS_MIRROR).
CMD ["sh", "-c", "face-models ensure insightface-opencv --models-dir /models && face-gateway --host 0.0.0.0 --port 8080 --models-dir /models --data-dir /data --default-model insightface-opencv"]
