# requestflow's controller image: Airflow 3.3 with the project's DAGs, operators and results store.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements/ /opt/requestflow/requirements/
COPY --chown=airflow:root pyproject.toml README.md /opt/requestflow/
COPY --chown=airflow:root requestflow/ /opt/requestflow/requestflow/
COPY --chown=airflow:root operators/ /opt/requestflow/operators/
COPY --chown=airflow:root dags/ /opt/requestflow/dags/
COPY --chown=airflow:root plugins/ /opt/requestflow/plugins/
COPY --chown=airflow:root native/ /opt/requestflow/native/
COPY --chown=airflow:root config/ /opt/requestflow/config/
COPY --chown=airflow:root sql/ /opt/requestflow/sql/
# the controller extra includes the celery provider (celery, kombu, redis), at the pins the native stack runs
RUN pip install --no-cache-dir -c /opt/requestflow/requirements/constraints-x86_64.txt \
        -e "/opt/requestflow[results,controller]"
ENV PYTHONPATH=/opt/requestflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/requestflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/requestflow/plugins
