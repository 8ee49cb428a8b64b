"""Controller side: Airflow hooks and operators of requestflow (the DAGs in dags/ wire them together)."""
