# syntax=docker/dockerfile:1
# MLflow tracking server for docker-compose.yml: pinned MLflow plus the PostgreSQL driver.
FROM python:3.11-slim
ARG MLFLOW_VERSION=3.17.2
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg2-binary>=2.9,<3"
RUN groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/mlflow mlflow \
    && mkdir -p /mlartifacts && chown mlflow:mlflow /mlartifacts
WORKDIR /home/mlflow
USER 10001:10001
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
