"""requestflow's scoreboard page inside Airflow: the FastAPI app (app.py), its login check (auth.py),
templates and static files."""
