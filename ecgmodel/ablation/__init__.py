"""The label-efficiency ablation as a library (no Prefect): spec, cells, MLflow tracking, runner, report."""
