#!/usr/bin/env bash
# The MLflow tracking server of a deployment (docker-compose.yaml runs this; the deploy tests
# start the same command): runs and the model registry in PostgreSQL, model files served by
# the server itself (--serve-artifacts), so workers need only the server's address, no
# credentials of the artifact store and no shared disk.
#   MLFLOW_BACKEND_STORE_URI   postgresql+psycopg2://user:password@host:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION  a folder, or s3://bucket/prefix, gs://..., wasbs://...
# The psycopg2 driver is named explicitly: SQLAlchemy 2.1 would otherwise pick psycopg 3.
set -euo pipefail
exec mlflow server \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI}" \
  --serve-artifacts \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlflow/artifacts}" \
  --host 0.0.0.0 \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}" \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000}"
