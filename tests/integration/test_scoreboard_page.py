"""The scoreboard page inside Airflow: a real api-server (SimpleAuthManager with real users and passwords, metadata
in a throwaway PostgreSQL database) with this checkout's plugins folder, on a seeded results store.

- Nobody gets anything without Airflow's login: anonymous requests, forged tokens, expired tokens and users the
  auth manager does not authorize are refused on every route (page, plot files, JSON, point pages, static files).
- In headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser is downloaded): log in through
  Airflow's login form, open the page from Airflow's navigation, check that the points drawn on the frontier are
  exactly those of a frontier computed by hand, change a selector and see the plot, the table and the URL follow,
  open a point's page (command line, histogram), and save screenshots in ``test-artifacts/``.
- A point measured on two image sets (a quick 20-image check after the 500-image figures), both dataset sizes
  ticked: one mark and one table row per image set, each with its own top-1, its own place on its image set's
  frontier, its own highlight and its own link.
- The latency statistic (issue #19) and the library version (issue #17): ``latency_stat=p90`` ranks the rows and puts
  the plot and its frontier (the view's p90 rows) on the p90, choosing the p90 as the X axis in the browser chooses
  it; ``colour=library_version`` gives each library and version its colour, named in the legend, as ``requestflow
  plot --colour version`` draws it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from requestflow.results.database import sqlalchemy_url, upgrade
from requestflow.results.load import load_documents
from requestflow.results.query import read_only
from tests.airflow_services import AirflowServices
from tests.asgi import asgi_get
from tests.scoreboard_seed import SEEDS, Seed, command, documents, frontier_by_hand, seed_store, templates

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("REQUESTFLOW_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("REQUESTFLOW_TEST_ARTIFACTS", ROOT / "test-artifacts"))
PAGE = "/requestflow/scoreboard/"
USERS = {"admin": "admin", "viewer": "viewer"}  # user -> role


class ApiServer(AirflowServices):
    """Only Airflow's api-server (no scheduler: nothing runs here), its metadata and the results store in fresh
    PostgreSQL databases, users with known passwords, the plugins folder of this checkout."""

    def __init__(self, home: Path) -> None:
        self.passwords = {user: secrets.token_urlsafe(12) for user in USERS}
        passwords_file = home / "passwords.json"
        passwords_file.write_text(json.dumps(self.passwords))
        (home / "dags").mkdir(exist_ok=True)
        super().__init__(home, {
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        }, services=("api-server",))
        self.base = f"http://127.0.0.1:{self.port}"
        self.jwt_secret = self.env["AIRFLOW__API_AUTH__JWT_SECRET"]
        self.results_url = sqlalchemy_url(self.env["AIRFLOW_CONN_REQUESTFLOW_RESULTS"])

    def __enter__(self) -> ApiServer:
        super().__enter__()
        try:
            upgrade(self.results_url)
        except BaseException:
            self.close()
            raise
        return self

    def token(self, user: str) -> str:
        """A real JWT from Airflow's own login endpoint (POST /auth/token with the user's password)."""
        request = urllib.request.Request(f"{self.base}/auth/token", method="POST",
                                         data=json.dumps({"username": user, "password": self.passwords[user]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["access_token"]

    def get(self, path: str, token: str | None = None, cookie: str | None = None,
            accept: str = "application/json") -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body), redirects not followed."""
        headers = {"Accept": accept}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if cookie is not None:
            headers["Cookie"] = f"_token={cookie}"
        request = urllib.request.Request(f"{self.base}{path}", headers=headers)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=60) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _jwt(claims: dict, key: bytes) -> str:
    """An HS512 JWT (what Airflow issues with a JWT secret) over ``claims``, signed with ``key``."""
    import jwt

    return jwt.encode(claims, key, algorithm="HS512")


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# a quick check on 20 images of three hikey960 points after their 500-image figures: the default view still shows
# each on 500 images; with both sizes ticked each point is two rows, on two frontiers (20 images: tflite 0.25-128,
# fastest, and tf 0.25-128, more accurate, which is beaten on 500; tflite 1.0-224, on 500's frontier, is beaten on 20)
QUICK_CHECK = {("mobilenet-v1-0.25-128", "tflite"): 0.30, ("mobilenet-v1-0.25-128", "tf"): 0.50,
               ("mobilenet-v1-1.0-224", "tflite"): 0.45}
QUICK_SEEDS = tuple(replace(s, top1=QUICK_CHECK[s.model, s.backend], images=20) for s in SEEDS
                    if s.board == "hikey960" and (s.model, s.backend) in QUICK_CHECK)
BOTH_SIZES = "board=hikey960&images=500&images=20"


def both_sizes_by_hand(ids: dict[tuple, str]) -> tuple[list[Seed], set[tuple[str, int]]]:
    """The hikey960 rows shown with 500 and 20 images ticked (as seeds), and the (point id, images) on a frontier,
    computed by hand per image set."""
    shown = [s for s in SEEDS if s.board == "hikey960" and s.images == 500 and s.top1 is not None]
    shown += list(QUICK_SEEDS)
    on = {(pid, n) for n in (500, 20) for pid in frontier_by_hand([s for s in shown if s.images == n], ids)}
    return shown, on


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, models_dir):
    with ApiServer(tmp_path_factory.mktemp("airflow-home")) as server:
        engine = create_engine(server.results_url)
        server.point_ids = seed_store(engine, models_dir)
        assert len(QUICK_SEEDS) == len(QUICK_CHECK)
        load_documents(engine, [pair for seed in QUICK_SEEDS for pair in documents(seed, *templates(models_dir))],
                       board="hikey960", sweep="manual__2026-11-29T10:00:00+00:00", dag_id="mobilenets_sweep")
        engine.dispose()
        yield server


def routes(server: ApiServer) -> list[str]:
    """Every kind of path the app serves (and one it does not): each must refuse a request without a login."""
    point = server.point_ids[SEEDS[0].key()]
    return [PAGE, "/requestflow/scoreboard", f"{PAGE}?backend=tflite&x=top5", f"{PAGE}plot.svg", f"{PAGE}plot.png",
            f"{PAGE}data.json", f"{PAGE}point/{point}", f"{PAGE}point/{point}/data.json",
            f"{PAGE}static/scoreboard.js", f"{PAGE}static/scoreboard.css", f"{PAGE}static/nothing.js",
            "/requestflow/", "/requestflow/docs", "/requestflow/openapi.json", "/requestflow/no/such/page"]


class TestNobodyGetsInWithoutAirflowsLogin:
    def test_anonymous_requests_are_refused_on_every_route(self, airflow):
        for path in routes(airflow):
            status, headers, body = airflow.get(path)
            assert status == 401, (path, status, body[:300])
            assert json.loads(body) == {"detail": "Not authenticated"}, path
            assert headers.get("www-authenticate") == "Bearer"

    def test_an_anonymous_browser_is_sent_to_airflows_login_page_and_shown_nothing(self, airflow):
        status, _, body = airflow.get(f"{PAGE}?backend=tf", accept="text/html")
        page = body.decode()
        assert status == 401
        next_url = urllib.parse.quote(f"{airflow.base}{PAGE}?backend=tf", safe="")
        assert f"/auth/login?next={next_url}" in page and "<svg" not in page and "mobilenet" not in page

    def test_forged_tokens_are_refused_as_bearer_and_as_cookie(self, airflow):
        real = airflow.token("admin")
        forged = _jwt(_claims(real), b"not-the-secret" * 5)  # same claims, another key
        tampered = ".".join([real.split(".")[0], base64.urlsafe_b64encode(json.dumps(
            {**_claims(real), "sub": "root"}).encode()).decode().rstrip("="), real.split(".")[2]])
        for token in (forged, tampered, "garbage", real + "x"):
            for path in routes(airflow):
                assert airflow.get(path, token=token)[0] == 403, (path, token[:20])
                assert airflow.get(path, cookie=token)[0] == 403, (path, token[:20])

    def test_an_expired_token_is_refused(self, airflow):
        claims = _claims(airflow.token("viewer"))
        expired = _jwt({**claims, "iat": claims["iat"] - 7200, "nbf": claims["nbf"] - 7200,
                        "exp": int(time.time()) - 3600}, airflow.jwt_secret.encode())
        status, _, body = airflow.get(PAGE, token=expired)
        assert status == 401 and json.loads(body) == {"detail": "Token Expired"}

    def test_a_user_the_auth_manager_does_not_authorize_is_refused(self, airflow):
        # a genuinely signed token whose user has no role: Airflow knows who it is but grants it nothing
        claims = _claims(airflow.token("viewer"))
        nobody = _jwt({**claims, "sub": "nobody", "role": None}, airflow.jwt_secret.encode())
        assert airflow.get("/api/v2/dags", token=nobody)[0] == 403  # Airflow's own API refuses it too
        for path in routes(airflow):
            status, _, body = airflow.get(path, token=nobody)
            assert status == 403, (path, status)
            assert "read access to DAG runs and assets" in json.loads(body)["detail"]

    def test_a_real_login_works_with_the_token_as_bearer_or_cookie(self, airflow):
        token = airflow.token("viewer")  # the least privileged role
        for kind in ("token", "cookie"):
            status, headers, body = airflow.get(f"{PAGE}data.json", **{kind: token})
            assert status == 200, (kind, body[:300])
            data = json.loads(body)
            assert len(data["rows"]) == len(SEEDS)
            assert headers["cache-control"] == "private, no-store"
        status, headers, body = airflow.get(f"{PAGE}plot.png", token=token)
        assert status == 200 and body.startswith(b"\x89PNG") and headers["content-type"] == "image/png"
        status, _, body = airflow.get(f"{PAGE}static/scoreboard.js", token=token)
        assert status == 200 and b"sortTable" in body
        assert airflow.get(f"{PAGE}static/..%2f..%2fauth.py", token=token)[0] == 404

    def test_airflow_lists_the_plugin_its_app_and_its_navigation_link(self, airflow):
        status, _, body = airflow.get("/api/v2/plugins", token=airflow.token("admin"))
        assert status == 200
        plugin = next(p for p in json.loads(body)["plugins"] if p["name"] == "requestflow_scoreboard")
        assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/requestflow"]
        assert [(v["name"], v["href"], v["category"]) for v in plugin["external_views"]] == [
            ("Scoreboard", "requestflow/scoreboard/", "browse")]
        status, _, body = airflow.get("/api/v2/importErrors", token=airflow.token("admin"))
        assert "Plugin" not in body.decode()


def asgi_json(app, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One GET through an ASGI app, in this process: (status, JSON body)."""
    status, body = asgi_get(app, path, headers)
    return status, json.loads(body)


class TestFailingClosedInProcess:
    """The app alone (no api-server, no auth manager): whatever cannot be checked is refused."""

    @pytest.fixture
    def app(self, monkeypatch):
        monkeypatch.syspath_prepend(str(ROOT / "plugins"))  # as Airflow does with its plugins folder
        from requestflow_scoreboard.app import create_app

        return create_app()

    def test_every_route_of_the_app_refuses_an_anonymous_request(self, app):
        paths = [route.path.replace("{point_id}", "0" * 64).replace("{fmt}", "svg").replace("{name}", "scoreboard.js")
                 for route in app.routes]
        assert len(paths) >= 7
        for path in paths + ["/", "/docs", "/openapi.json"]:
            assert asgi_json(app, path) == (401, {"detail": "Not authenticated"}), path

    def test_a_token_that_cannot_be_checked_is_refused(self, app):
        # no auth manager in this process: checking the token fails, and the request is refused, not let through
        status, body = asgi_json(app, "/scoreboard/data.json", {"Authorization": "Bearer eyJ.e30.x"})
        assert status == 403 and "could not be checked" in body["detail"]


class TestTheEndpoints:
    def test_the_json_frontier_is_the_frontier_computed_by_hand(self, airflow):
        status, _, body = airflow.get(f"{PAGE}data.json", token=airflow.token("viewer"))
        assert status == 200
        data = json.loads(body)
        on = {row["point_id"] for row in data["rows"] if row["mark"] in data["frontier"]}
        assert len(on) == len(data["frontier"]) and on == frontier_by_hand(SEEDS, airflow.point_ids)

    def test_with_two_dataset_sizes_ticked_each_row_of_a_point_is_on_its_own_image_sets_frontier(self, airflow):
        status, _, body = airflow.get(f"{PAGE}data.json?{BOTH_SIZES}", token=airflow.token("viewer"))
        assert status == 200
        data = json.loads(body)
        shown, by_hand = both_sizes_by_hand(airflow.point_ids)
        assert sorted((r["point_id"], r["image_count"]) for r in data["rows"]) == sorted(
            (airflow.point_ids[s.key()], s.images) for s in shown)
        assert len({r["mark"] for r in data["rows"]}) == len(data["rows"])
        assert {(r["point_id"], r["image_count"]) for r in data["rows"] if r["mark"] in data["frontier"]} == by_hand

    def test_a_bad_metric_is_a_clear_400_and_an_unknown_point_a_404(self, airflow):
        token = airflow.token("viewer")
        status, _, body = airflow.get(f"{PAGE}data.json?x=speed", token=token)
        assert status == 400 and "unknown metric 'speed'" in json.loads(body)["detail"]
        assert airflow.get(f"{PAGE}point/{'0' * 64}", token=token)[0] == 404
        assert airflow.get(f"{PAGE}point/not-a-point-id", token=token)[0] == 404

    def test_an_empty_selection_and_a_bad_metric_are_pages_too(self, airflow):
        token = airflow.token("viewer")
        status, _, body = airflow.get(f"{PAGE}?board=nowhere", token=token, accept="text/html")
        assert status == 200 and "no point has both" in body.decode() and 'id="count-rows">0<' in body.decode()
        status, _, body = airflow.get(f"{PAGE}?y=speed", token=token, accept="text/html")
        assert status == 400 and "unknown metric &#39;speed&#39;" in body.decode()

    def test_every_point_has_its_page_even_without_latency_or_accuracy(self, airflow):
        token = airflow.token("viewer")
        for seed in SEEDS:
            status, _, body = airflow.get(f"{PAGE}point/{airflow.point_ids[seed.key()]}", token=token,
                                          accept="text/html")
            page = body.decode()
            assert status == 200, (seed, page[-500:])
            assert ('id="command-performance"' in page) == (seed.median_s is not None)
            assert ('id="command-accuracy"' in page) == (seed.top1 is not None)
            assert ("no raw samples" in page) == (seed.median_s is None)

    def test_the_page_and_the_cli_draw_the_same_figure(self, airflow, run_cli, tmp_path):
        query = "x=throughput_ips&y=top5&board=hikey960&backend=tflite&backend=armcl&log_x=1"
        status, headers, served = airflow.get(f"{PAGE}plot.svg?{query}", token=airflow.token("viewer"))
        assert status == 200 and headers["content-type"] == "image/svg+xml"
        code, _, stderr = run_cli("plot", "--x", "throughput", "--y", "top5", "--board", "hikey960", "--backend",
                                  "tflite,armcl", "--log-x", "--out", tmp_path / "cli.svg", "--db", airflow.results_url)
        assert code == 0, stderr
        assert (tmp_path / "cli.svg").read_bytes() == served

    def test_the_version_report_is_a_page_of_its_own(self, airflow):
        token = airflow.token("viewer")
        status, _, body = airflow.get(f"{PAGE}versions?board=hikey960&a=2.21.0&b=24.11", token=token,
                                      accept="text/html")
        page = body.decode()
        assert status == 200 and 'id="version-summary"' in page and '<option value="24.11" selected>' in page
        assert "<strong>0</strong> configuration(s) of hikey960" in page  # no configuration has both versions
        status, _, body = airflow.get(f"{PAGE}versions?board=hikey960&a=2.21.0&b=9.9", token=token,
                                      accept="text/html")
        assert status == 400 and "no result with library version &#39;9.9&#39;" in body.decode()

    def test_the_latency_statistic_and_the_colour_by_library_version_are_in_the_url(self, airflow, run_cli, tmp_path):
        token = airflow.token("viewer")
        status, _, body = airflow.get(f"{PAGE}data.json?latency_stat=p90&board=hikey960", token=token)
        data = json.loads(body)
        assert status == 200 and (data["selection"]["latency_stat"], data["selection"]["x"]) == ("p90", "latency_p90_s")
        timed = [r["latency_p90_s"] for r in data["rows"] if r["latency_p90_s"] is not None]
        assert timed == sorted(timed) and [r["rank"] for r in data["rows"]][:2] == [1, 2]  # fastest first
        engine = create_engine(airflow.results_url)
        _, view = read_only(engine, "SELECT point_id FROM pareto_frontier WHERE latency_stat = 'p90' "
                                    "AND board = 'hikey960' AND largest_image_set")  # what the page shows
        engine.dispose()
        assert {r["point_id"] for r in data["rows"] if r["mark"] in data["frontier"]} == {p for (p,) in view}
        status, _, body = airflow.get(f"{PAGE}?colour=library_version", token=token, accept="text/html")
        page = body.decode()
        assert status == 200 and '<option value="library_version" selected>' in page
        assert all(f"> {label}</label>" in page for label in ("24.11 (armcl)", "2.21.0 (tensorflow)",
                                                              "2.3.0 (ai-edge-litert)"))
        status, _, served = airflow.get(f"{PAGE}plot.svg?colour=library_version", token=token)
        assert status == 200 and set(re.findall(rb'data-colour="([^"]+)"', served)) == {
            b"armcl 24.11", b"tensorflow 2.21.0", b"ai-edge-litert 2.3.0"}
        code, _, stderr = run_cli("plot", "--colour", "version", "--out", tmp_path / "v.svg", "--db",
                                  airflow.results_url)
        assert code == 0, stderr
        assert (tmp_path / "v.svg").read_bytes() == served

    def test_selector_values_are_bound_parameters_not_sql(self, airflow):
        token = airflow.token("viewer")
        quote = urllib.parse.quote
        status, _, body = airflow.get(f"{PAGE}data.json?board={quote(chr(39) + ' OR 1=1 --')}&sweep={quote('x%')}",
                                      token=token)
        assert status == 200 and json.loads(body)["rows"] == []


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI (Debian's chromium: dev.sh installs it)")
        pytest.skip(f"no {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Debian's own Chromium through Playwright's executable_path: Playwright never downloads a browser here.
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield instance
        instance.close()


def drawn(page) -> dict[str, dict]:
    """The points drawn in the page's plot: point id -> its data attributes."""
    attributes = "gs => gs.map(g => Object.fromEntries(Array.from(g.attributes).map(a => [a.name, a.value])))"
    return {g["data-point-id"]: g for g in page.eval_on_selector_all("#plot svg g.point", attributes)}


def table_ids(page, selector: str = "#points tbody tr") -> list[str]:
    return page.eval_on_selector_all(selector, "rows => rows.map(r => r.dataset.pointId)")


def log_in(page, server: ApiServer, path: str) -> None:
    """Open ``path``: Airflow's login form, as the viewer, comes back to it."""
    page.goto(f"{server.base}{path}")
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", "viewer")
    page.fill("input[name=password]", server.passwords["viewer"])
    page.click("button[type=submit]")
    page.wait_for_url(f"**{PAGE}*")
    page.wait_for_selector("#plot svg g.point")


class TestInABrowser:
    def test_log_in_read_the_frontier_change_a_selector_open_a_point(self, airflow, browser):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        ids = airflow.point_ids

        # 1. anonymous: the page sends the browser to Airflow's login form, which comes back to the page
        log_in(page, airflow, PAGE)

        # 2. every seeded point is in the table; the drawn ones in the plot; the frontier is the one by hand
        by_hand = frontier_by_hand(SEEDS, ids)
        points = drawn(page)
        assert set(table_ids(page)) == set(ids.values())
        assert set(points) == {ids[s.key()] for s in SEEDS if s.median_s is not None and s.top1 is not None}
        assert {pid for pid, g in points.items() if g["data-frontier"] == "true"} == by_hand
        assert set(table_ids(page, "#points tbody tr.frontier")) == by_hand
        assert page.inner_text("#count-frontier") == str(len(by_hand))
        everything = set(points)
        # variants read as the CLI's labels, in the selector and the table, never as JSON
        labels = page.eval_on_selector_all("#filter-variant label", "ls => ls.map(l => l.innerText.trim())")
        assert sorted(labels) == ["CL/NHWC/DIRECT/NONE", "CL/NHWC/GEMM/NONE", "XNNPACK", "graph"]
        cells = page.eval_on_selector_all("#points tbody td[data-column=variant_label]",
                                          "cs => cs.map(c => c.innerText)")
        assert set(cells) == set(labels) and not page.locator("#points td[data-column=variant]").count()
        page.screenshot(path=str(ARTIFACTS / "scoreboard.png"), full_page=True)

        # 3. a selector: only tflite; the URL, the plot and the table follow
        page.check("#filter-backend input[value=tflite]")  # the form submits itself
        page.wait_for_url("**backend=tflite**")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
        assert query["backend"] == ["tflite"] and query["x"] == ["latency_median_s"] and query["y"] == ["top1"]
        tflite = [s for s in SEEDS if s.backend == "tflite"]
        points = drawn(page)
        assert {g["data-backend"] for g in points.values()} == {"tflite"}
        assert set(points) == {ids[s.key()] for s in tflite if s.median_s is not None and s.top1 is not None}
        assert set(table_ids(page)) == {ids[s.key()] for s in tflite}
        assert {pid for pid, g in points.items() if g["data-frontier"] == "true"} == frontier_by_hand(tflite, ids)
        assert frontier_by_hand(tflite, ids) != by_hand
        assert page.is_checked("#filter-backend input[value=tflite]")

        # 4. another axis: the same URL state, Y becomes throughput; a shared URL shows the same view
        page.select_option("#y", "throughput_ips")
        page.wait_for_url("**y=throughput_ips**")
        shared = page.url
        other = context.new_page()
        other.goto(shared)
        assert drawn(other).keys() == drawn(page).keys() and other.input_value("#y") == "throughput_ips"
        other.close()

        # 5. the table sorts by a column (numbers as numbers)
        page.click("#points th[data-column=latency_median_s]")
        medians = page.eval_on_selector_all("#points tbody td[data-column=latency_median_s]",
                                            "cells => cells.map(c => c.dataset.value)")
        present = [float(m) for m in medians if m]
        assert present == sorted(present) and medians[len(present):] == [""] * (len(medians) - len(present))

        # 6. a point's page: provenance, the command that replays it, the raw samples as a histogram
        seed = SEEDS[0]
        page.goto(f"{airflow.base}{PAGE}")
        page.click(f"#plot a.point-link:has(g[data-point-id='{ids[seed.key()]}'])")
        page.wait_for_url(f"**/point/{ids[seed.key()]}**")
        assert page.inner_text("#command-performance") == shlex.join(command(seed, "performance"))
        assert page.inner_text("#command-accuracy") == shlex.join(command(seed, "accuracy"))
        assert page.locator("#latency-histogram svg g[id^=histogram-bar-]").count() >= 5
        assert "(21 runs)" in page.text_content("#latency-histogram svg")
        assert "mobilenets_sweep" in page.inner_text("#provenance")
        page.screenshot(path=str(ARTIFACTS / "scoreboard-point.png"), full_page=True)

        # 7. Airflow's own navigation opens the page (Browse > Scoreboard, in a tab of its own)
        page.goto(f"{airflow.base}/")
        page.get_by_role("button", name="Browse").click()
        with context.expect_page() as opened:
            page.get_by_role("menuitem", name="Scoreboard").click()
        tab = opened.value
        tab.wait_for_selector("#plot svg g.point")
        assert tab.url == f"{airflow.base}{PAGE}" and set(drawn(tab)) == everything
        context.close()
        if os.environ.get("REQUESTFLOW_UPDATE_DOCS_SCREENSHOT"):
            shutil.copy(ARTIFACTS / "scoreboard.png", ROOT / "docs" / "scoreboard.png")

    def test_an_axis_on_the_p90_ranks_by_it_and_the_colour_can_be_the_library_version(self, airflow, browser):
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        log_in(page, airflow, f"{PAGE}?board=hikey960")
        assert page.input_value("#latency_stat") == "median"
        page.select_option("#x", "latency_p90_s")  # the page's script chooses the p90 with it
        page.wait_for_url("**latency_stat=p90**")
        assert page.input_value("#latency_stat") == "p90" and page.input_value("#x") == "latency_p90_s"
        assert page.inner_text("#points th[data-column=rank]") == "rank (p90)"
        cells = page.eval_on_selector_all("#points tbody tr", "rows => rows.map(r => [r.querySelector("
                                          "'td[data-column=rank]').dataset.value, r.querySelector("
                                          "'td[data-column=latency_p90_s]').dataset.value])")
        timed = [(int(rank), float(p90)) for rank, p90 in cells if p90]
        assert [p90 for _, p90 in timed] == sorted(p90 for _, p90 in timed) and timed[0][0] == 1
        page.select_option("#colour", "library_version")
        page.wait_for_url("**colour=library_version**")
        assert {g["data-colour"] for g in drawn(page).values()} == {"armcl 24.11", "tensorflow 2.21.0",
                                                                    "ai-edge-litert 2.3.0"}
        assert "library version" in page.inner_text("#plot figcaption")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "scoreboard-p90-versions.png"), full_page=True)
        context.close()

    def test_a_point_on_two_image_sets_is_two_marks_each_with_its_figures_frontier_highlight_and_link(self, airflow,
                                                                                                     browser):
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        ids = airflow.point_ids
        log_in(page, airflow, f"{PAGE}?{BOTH_SIZES}")
        shown, by_hand = both_sizes_by_hand(ids)

        # every row of the view and every mark of the plot: its point, its own top-1, its own image set's frontier
        def expected(rows: list[Seed]) -> list[tuple]:
            return sorted((ids[s.key()], s.top1, (ids[s.key()], s.images) in by_hand) for s in rows)

        marks = page.eval_on_selector_all("#plot svg g.point", "gs => gs.map(g => [g.dataset.pointId, g.dataset.y, "
                                                               "g.dataset.frontier === 'true'])")
        assert sorted((p, float(y), on) for p, y, on in marks) == expected([s for s in shown if s.median_s is not None])
        table = page.eval_on_selector_all("#points tbody tr", "rs => rs.map(r => [r.dataset.pointId, "
                                                              "r.querySelector('td[data-column=top1]').dataset.value, "
                                                              "r.classList.contains('frontier')])")
        assert sorted((p, float(top1), on) for p, top1, on in table) == expected(shown)
        assert page.inner_text("#count-frontier") == str(len(by_hand))
        tf = ids[next(s for s in QUICK_SEEDS if s.backend == "tf").key()]  # on 20 images' frontier, not on 500's
        assert (tf, 20) in by_hand and (tf, 500) not in by_hand

        # hovering the row of tf on 20 images lights up its mark on 20 images, not the one on 500
        row = page.locator(f"#points tbody tr[data-point-id='{tf}']:has(td[data-column=top1][data-value='0.5'])")
        row.hover()
        lit = page.eval_on_selector_all("#plot g.point.highlight",
                                        "gs => gs.map(g => [g.dataset.pointId, g.dataset.y])")
        assert lit == [[tf, "0.5"]]
        page.screenshot(path=str(ARTIFACTS / "scoreboard-two-image-sets.png"), full_page=True)

        # its mark opens the point's page on 20 images, and the way back keeps both sizes ticked
        page.click(f"#plot a.point-link:has(g[data-point-id='{tf}'][data-y='0.5'])")
        page.wait_for_url(f"**/point/{tf}**")
        assert page.inner_text("#figures td[data-column=image_count]") == "20"
        page.click("#back")
        page.wait_for_selector("#plot svg g.point")
        assert page.is_checked("#filter-images input[value='20']") and page.is_checked(
            "#filter-images input[value='500']")
        context.close()
