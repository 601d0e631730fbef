# One image for every Python service of docker-compose.yaml (code location, webserver, daemon,
# celery workers, MLflow server): the same code and the same pinned libraries everywhere, which
# the celery executor needs (a worker rebuilds the job from the code it has).
# Not built on the project's development machines (no Docker engine there).
FROM python:3.11-slim
WORKDIR /opt/anomaly_pipelines
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY pyproject.toml constraints.txt README.md ./
COPY anomaly_pipelines ./anomaly_pipelines
COPY configs ./configs
RUN pip install -c constraints.txt ".[deploy]"
ENV DAGSTER_HOME=/opt/dagster_home \
    ANOMALY_PIPELINES_CONFIG=/opt/anomaly_pipelines/configs/deploy/pipeline.yaml
RUN mkdir -p "$DAGSTER_HOME" && cp configs/deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
