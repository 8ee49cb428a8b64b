"""The scoreboard page: a FastAPI app that Airflow's api-server serves under ``/requestflow`` (see
``requestflow_scoreboard_plugin.py``).

- ``scoreboard/``: selectors (board, backend, variant, width, resolution, precision, sweep, dataset size, library
  version, X and Y metrics, log axes, the latency statistic (median or p90) the rows are ranked by and a latency axis
  shows, the colour: backend or library version) in a GET form, so the whole state is the URL; the plot (the same
  figure as ``requestflow plot``, inline SVG, each point linking to its page); the sortable table of every
  dimension, each board's rows ranked fastest first;
- ``scoreboard/plot.svg``, ``scoreboard/plot.png``, ``scoreboard/data.json``: the same selection as files / JSON;
- ``scoreboard/point/<point id>``: one point, its provenance, the command that replays it and its raw latency
  samples as a histogram (``.../data.json``: the same as JSON); a reference board's caveats; a form choosing
  another accuracy point of the same model, whose ``.../diff?with=<point id>`` lists the images whose top-1
  differs (``requestflow diff``);
- ``scoreboard/versions``: the version report (``requestflow version-report``): one board, two library versions,
  every configuration measured with both (latency ratio and its significance, top-1 delta, images whose top-1
  changed);
- ``scoreboard/static/<file>``: the page's own JavaScript and CSS (no third-party script, no CDN).

Every request needs Airflow's login (``auth.AirflowLoginRequired`` wraps the whole app). The results store is read
through ``operators.results_hook.ResultsHook``'s URLs (the Connection ``requestflow_results``, else requestflow's
own resolution; the Connection ``requestflow_results_reader`` when that login cannot switch roles), with one engine
per process: every transaction is read-only, acts as ``requestflow_reader`` and cuts each statement after
$REQUESTFLOW_PAGE_TIMEOUT seconds (default 5; ``requestflow.results.roles``); every query has bound parameters.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, HTTPException
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from requestflow_scoreboard.auth import AirflowLoginRequired

log = logging.getLogger(__name__)

URL_PREFIX = "/requestflow"
HERE = Path(__file__).resolve().parent
STATIC_FILES = {"scoreboard.js": "text/javascript", "scoreboard.css": "text/css"}
NO_STORE = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "SAMEORIGIN"}

_engine = None
_engine_lock = threading.Lock()


def results_engine():
    """The results store's reader engine (``roles.reader_engine``), created once per process from the ResultsHook's
    URLs."""
    global _engine
    with _engine_lock:
        if _engine is None:
            from requestflow.results import roles

            try:
                from operators.results_hook import ResultsHook
            except ImportError:  # the checkout's operators/ not on the PYTHONPATH: requestflow's own resolution
                from requestflow.results.database import resolve_url

                log.warning("requestflow scoreboard: operators.results_hook not importable; using requestflow's "
                            "own resolution of the results store")
                url, reader = resolve_url(None)[0], roles.reader_url(None)
            else:
                hook = ResultsHook()
                url, reader = hook.url, hook.reader
            _engine = roles.reader_engine(url, reader, roles.timeout_from_env(roles.PAGE_TIMEOUT_ENV,
                                                                             roles.PAGE_TIMEOUT_S))
        return _engine


def _templates():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    from requestflow.results.plot import mark_id
    from requestflow_scoreboard import present

    env.filters.update(cell=present.cell, metric_value=present.metric_value, header=present.header,
                       ordered_checks=present.ordered_checks)
    env.globals.update(quote=quote, mark_id=mark_id)
    return env


class ResultsUnavailable(Exception):
    """The results store could not be read (not reachable, no schema yet)."""


def _query(request: Request) -> dict[str, list[str]]:
    return {key: request.query_params.getlist(key) for key in request.query_params}


def _airflow_home(request: Request) -> str:
    """Airflow's own base path (the app is mounted at ``<base>/requestflow``)."""
    return request.scope.get("root_path", "").removesuffix(URL_PREFIX) + "/"


def point_link(selection, row: dict) -> str:
    """A scoreboard row's point page (relative to the scoreboard), keeping the view's URL for the way back. With
    dataset sizes ticked, a point may show once per image set: its link puts the row's own size first, which the
    point page shows (``scoreboard_data.read_point``)."""
    chosen, count = selection.filters.get("images") or (), row.get("image_count")
    if not chosen or count is None:
        return f"point/{row['point_id']}?{selection.query()}"
    images = (str(count), *(v for v in chosen if v != str(count)))
    return f"point/{row['point_id']}?{selection.query(filters={**selection.filters, 'images': images})}"


def create_app() -> FastAPI:
    from requestflow.errors import UserError
    from requestflow.results import diff as diff_data
    from requestflow.results import reference as reference_data
    from requestflow.results import scoreboard_data as data
    from requestflow.results.plot import METRICS, inline_svg, mark_id
    from requestflow.results.query import LATENCY_STATS
    from requestflow.results.regressions import open_regressions

    # no /docs, /redoc or /openapi.json: nothing is served that the login middleware has not seen first
    app = FastAPI(title="requestflow scoreboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AirflowLoginRequired)
    templates = _templates()

    def engine():
        try:
            return results_engine()
        except Exception as exc:
            raise ResultsUnavailable(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)) from None

    def selection(request: Request):
        return data.Selection.from_query(_query(request))

    def page(name: str, status: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(templates.get_template(name).render(**context), status_code=status, headers=NO_STORE)

    @app.exception_handler(UserError)
    async def bad_request(request: Request, exc: UserError):
        if "text/html" in request.headers.get("accept", ""):
            return page("error.html", 400, title="Bad request", message=str(exc), home=_airflow_home(request))
        return JSONResponse({"detail": str(exc)}, status_code=400, headers=NO_STORE)

    @app.exception_handler(ResultsUnavailable)
    async def unavailable(request: Request, exc: ResultsUnavailable):
        message = f"the results store cannot be read: {exc}"
        if "text/html" in request.headers.get("accept", ""):
            return page("error.html", 503, title="Results store unavailable", message=message,
                        home=_airflow_home(request))
        return JSONResponse({"detail": message}, status_code=503, headers=NO_STORE)

    def read(function, *args):
        """Run a store read; a store that is down or has no schema is a 503, a bad request a 400."""
        from requestflow.results.roles import RoleUnavailable

        try:
            return function(engine(), *args)
        except RoleUnavailable as exc:  # the store's set-up, not the request: said as it is
            raise ResultsUnavailable(str(exc)) from None
        except UserError as exc:
            if str(exc).startswith("SQL error"):
                raise ResultsUnavailable(str(exc)) from None
            raise
        except ResultsUnavailable:
            raise
        except Exception as exc:  # connection refused, authentication failed, ...
            log.exception("requestflow scoreboard: reading the results store failed")
            raise ResultsUnavailable(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]) from None

    @app.get("/scoreboard", include_in_schema=False)
    def scoreboard_without_slash(request: Request):
        query = request.url.query
        return RedirectResponse("scoreboard/" + (f"?{query}" if query else ""), status_code=307)

    @app.get("/scoreboard/", response_class=HTMLResponse)
    def scoreboard_page(request: Request):
        chosen = selection(request)
        query = chosen.query()
        options = read(data.options)
        rows, drawing = read(data.draw, chosen, "svg", lambda row: point_link(chosen, row))
        references = read(reference_data.reference_boards, {row["board"] for row in rows})
        regressions = read(open_regressions, rows)  # unacknowledged, of the selected points
        return page("scoreboard.html", selection=chosen, query=query, options=options, rows=rows,
                    point_link=lambda row: point_link(chosen, row),
                    variant_labels=read(data.variant_labels), version_labels=read(data.version_labels),
                    latency_stats=LATENCY_STATS, colours=data.colour_choices(),
                    references=references, regressions=regressions,
                    drawing=drawing, svg=inline_svg(drawing.data), filters=data.FILTERS,
                    filter_labels=data.FILTER_LABELS, metrics=METRICS, columns=data.COLUMNS,
                    home=_airflow_home(request))

    @app.get("/scoreboard/plot.{fmt}")
    def scoreboard_plot(request: Request, fmt: str):
        if fmt not in ("svg", "png"):
            raise UserError(f"plot.{fmt}: a plot is plot.svg or plot.png")
        _, drawing = read(data.draw, selection(request), fmt)
        return Response(drawing.data, media_type="image/svg+xml" if fmt == "svg" else "image/png", headers=NO_STORE)

    @app.get("/scoreboard/data.json")
    def scoreboard_data(request: Request):
        chosen = selection(request)
        rows, drawing = read(data.draw, chosen, "svg")
        return JSONResponse({"selection": {"x": chosen.x, "y": chosen.y, "log_x": chosen.log_x,
                                           "log_y": chosen.log_y, "filters": chosen.filters,
                                           "latency_stat": chosen.latency_stat, "colour": chosen.colour},
                             "rows": [{**row, "mark": mark_id(row)} for row in rows],  # a point on an image set
                             "frontier": sorted(drawing.frontier), "drawn": drawing.drawn},  # marks
                            headers=NO_STORE)

    def point_or_404(point_id: str, images: list[str] | None = None) -> dict:
        point = read(data.read_point, point_id, images or [])  # a point on several image sets: the chosen one
        if point is None:
            raise HTTPException(404, f"no point {point_id!r} on the scoreboard")
        return point

    @app.get("/scoreboard/point/{point_id}", response_class=HTMLResponse)
    async def point_page(request: Request, point_id: str):
        point = await run_in_threadpool(point_or_404, point_id, request.query_params.getlist("images"))
        row = point["row"]
        marks = {k: row[f"latency_{k}_s"] for k in ("min", "median", "p90") if row.get(f"latency_{k}_s") is not None}
        from requestflow.results.plot import histogram

        svg = await run_in_threadpool(histogram, point["samples"], "svg",
                                      title=f"{row['model']} {row['backend']} {row['precision']} on {row['board']}",
                                      marks=marks)
        references = await run_in_threadpool(read, reference_data.reference_boards, [row["board"]])
        compare = (await run_in_threadpool(read, diff_data.compare_choices, row["accuracy_point_id"])
                   if row.get("accuracy_point_id") else None)
        return page("point.html", point=point, row=row, histogram=inline_svg(svg), query=request.url.query,
                    references=references, compare=compare,
                    columns=data.COLUMNS, metrics=METRICS, pretty_json=data.pretty_json,
                    home=_airflow_home(request))

    @app.get("/scoreboard/point/{point_id}/diff", response_class=HTMLResponse)
    def point_diff(request: Request, point_id: str):
        """The images whose top-1 differs between this point's accuracy result and another accuracy point's
        (``?with=<point id>``, as ``requestflow diff`` takes it)."""
        accuracy_point = read(diff_data.accuracy_point_of, point_id) if data.POINT_ID.match(point_id) else False
        if accuracy_point is False:
            raise HTTPException(404, f"no point {point_id!r} on the scoreboard")
        if accuracy_point is None:
            raise UserError("this point has no accuracy result: there are no predictions to compare")
        other = request.query_params.get("with", "").strip()
        if not other:
            raise UserError("choose the accuracy point to compare with: ?with=<point id>")
        result = read(diff_data.mispredictions, accuracy_point, other)
        other_row = read(diff_data.scoreboard_point_of, result.b.point_id)
        return page("diff.html", diff=result, point_id=point_id, other_row=other_row, home=_airflow_home(request))

    @app.get("/scoreboard/point/{point_id}/data.json")
    def point_data(request: Request, point_id: str):
        return JSONResponse(point_or_404(point_id, request.query_params.getlist("images")), headers=NO_STORE)

    @app.get("/scoreboard/versions", response_class=HTMLResponse)
    def versions_page(request: Request):
        """The version report (``requestflow version-report``): ``?board=B&a=VERSION&b=VERSION``."""
        from requestflow.results import version_report

        boards = read(version_report.library_versions)
        board = request.query_params.get("board") or next(iter(boards), "")
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        report = read(version_report.version_report, board, a, b) if a and b else None
        return page("versions.html", boards=boards, board=board, a=a, b=b, report=report,
                    home=_airflow_home(request))

    @app.get("/scoreboard/static/{name}")
    def static(name: str):
        if name not in STATIC_FILES:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return FileResponse(HERE / "static" / name, media_type=STATIC_FILES[name], headers=NO_STORE)

    return app
