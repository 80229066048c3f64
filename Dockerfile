# Image for every `rectune` process (worker, agents, CLI). Production brokers are
# Apache Kafka and Redis; the embedded ones in the wheel stay unused here.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY streams ./streams
COPY serving_sidecar ./serving_sidecar
COPY agents ./agents
COPY simulator ./simulator
COPY rectune ./rectune
RUN pip install --no-cache-dir .
ENTRYPOINT []
CMD ["rectune", "--help"]
