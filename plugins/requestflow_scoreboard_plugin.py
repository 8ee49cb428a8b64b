"""Airflow plugin: requestflow's scoreboard page inside Airflow (an Airflow 3 FastAPI app plus a navigation link).

The api-server serves the app under ``/requestflow`` (the page: ``/requestflow/scoreboard/``); the link appears
in the UI's **Browse** menu. Airflow does not authenticate plugin apps: the app requires Airflow's own login on
every request itself (``requestflow_scoreboard/auth.py``). Enable it by pointing Airflow at this folder:
``AIRFLOW__CORE__PLUGINS_FOLDER=<checkout>/plugins`` (the folder goes on ``sys.path``, so the package
``requestflow_scoreboard`` beside this file imports; ``.airflowignore`` keeps Airflow from importing its files
one by one).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from requestflow_scoreboard.app import URL_PREFIX, create_app


class RequestflowScoreboardPlugin(AirflowPlugin):
    name = "requestflow_scoreboard"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "requestflow scoreboard"}]
    # No url_route: a plain link that opens the page itself, so that its URL (the whole view) can be shared.
    external_views = [{"name": "Scoreboard", "href": f"{URL_PREFIX.lstrip('/')}/scoreboard/", "destination": "nav",
                       "category": "browse"}]
