-- MLflow's backend store lives next to Dagster's database on the same server (docker-compose.yaml).
CREATE DATABASE mlflow;
