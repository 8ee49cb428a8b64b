"""The local-Airflow harness: not operators, but what runs Airflow on this machine for the CLI's controller commands
(``requestflow sweep``, ``requestflow airflow-env``; ``operators.commands``). ``airflow_home`` makes a local Airflow
ready (environment, ``airflow.cfg``, PostgreSQL metadata, pools), ``dag_run`` runs one DAG through it with
``dag.test()``, ``stopping`` stops such a run cleanly on SIGINT/SIGTERM.

It imports no Airflow at module level: Airflow reads its configuration when first imported, so everything here
builds an environment and runs Airflow in a subprocess with it.
"""
