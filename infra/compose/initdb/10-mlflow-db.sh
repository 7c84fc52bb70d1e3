#!/bin/bash
# Runs once, when the PostgreSQL volume is first created: a second database for MLflow's tracking store.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
SELECT 'CREATE DATABASE ${MLFLOW_DB:-mlflow}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '${MLFLOW_DB:-mlflow}')\gexec
SQL
