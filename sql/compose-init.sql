-- docker-compose: the results store's database beside Airflow's metadata (same server, its own database).
CREATE DATABASE requestflow OWNER airflow;
