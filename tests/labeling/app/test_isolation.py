"""Isolation: every labeler endpoint tried with another labeler's assignment ids and with no credentials, every
admin endpoint with a labeler, with nobody and with a wrong token: all refused, nothing changed.

`pytest -s tests/labeling/app/test_isolation.py` prints the number of combinations (the README's figure)."""

import re

from fastapi.testclient import TestClient
from serve_testing import ADMIN, Labeler, app, setup_project  # noqa: F401 (fixture)
from sqlalchemy import func, select

from prefer.labeling.app.models import Assignment, Label
from prefer.labeling.app.security import BackoffPolicy

RESPONSES = {"p1": ["a", "b", "c"], "p2": ["d", "e"]}
BODIES = {"draft": {"ranking": [0, 1]}, "submit": {"ranking": [0, 1, 2]}}


def all_routes(routes):
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI >= 0.13x wraps included routers
        yield from all_routes(included.routes) if included is not None else [route]


def routes(app, prefix):
    return sorted(
        {
            (method, route.path)
            for route in all_routes(app.routes)
            if (getattr(route, "path", None) or "").startswith(prefix)
            for method in getattr(route, "methods", None) or ()
            if method != "HEAD"
        }
    )


def fill(path, values):
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), path)


def snapshot(app):
    with app.state.sessionmaker() as db:
        return (
            db.scalar(select(func.count()).select_from(Label)),
            sorted((a.id, a.status, str(a.draft)) for a in db.scalars(select(Assignment))),
        )


def test_every_endpoint_refuses_the_wrong_identity(app):
    pid = setup_project(
        TestClient(app),
        prompts=list(RESPONSES),
        responses=RESPONSES,
        labelers=("ann", "bob"),
        overlap=1,
        kinds=("ranking", "demonstration"),
    )
    ann, bob = Labeler(app, "ann"), Labeler(app, "bob")
    bobs = [a["assignment_id"] for a in bob.request("GET", "/api/queue").json()["assignments"]]
    assert bobs and not set(bobs) & {a["assignment_id"] for a in ann.request("GET", "/api/queue").json()["assignments"]}
    before = snapshot(app)
    # Dozens of wrong admin tokens follow from one address: without this they would (rightly) get 429 after 5; here
    # the point is that each is refused for its identity (test_limits.py covers the back-off).
    app.state.backoff.policies["admin"] = BackoffPolicy(free=10**6)
    anonymous = TestClient(app)
    tried = refused = 0

    labeler_routes = routes(app, "/api/assignments") + [("GET", "/label/{assignment_id}")]
    assert {path for _, path in labeler_routes} == {
        "/api/assignments/{assignment_id}",
        "/api/assignments/{assignment_id}/draft",
        "/api/assignments/{assignment_id}/skip",
        "/api/assignments/{assignment_id}/submit",
        "/label/{assignment_id}",
    }
    for method, path in labeler_routes:
        body = BODIES.get(path.rsplit("/", 1)[-1])
        for aid in bobs:
            url = fill(path, {"assignment_id": aid})
            as_ann = ann.request(method, url, json=body)  # a logged-in labeler, someone else's id
            assert as_ann.status_code == 404 and "no such assignment of yours" in as_ann.text, (method, url)
            as_nobody = anonymous.request(method, url, json=body, follow_redirects=False)
            assert as_nobody.status_code in ((303,) if path.startswith("/label") else (401,)), (method, url)
            if path.startswith("/label"):
                assert as_nobody.headers["location"] == "/login"
            tried += 2
            refused += 2
    assert anonymous.get("/api/queue").status_code == 401
    tried, refused = tried + 1, refused + 1

    admin_routes = [r for r in routes(app, "/api/admin") if r[1] != "/api/admin/login"]
    admin_routes += [("GET", "/admin"), ("GET", "/admin/projects/{project_id}")]
    assert len(admin_routes) >= 14
    values = {"project_id": pid, "kind": "rankings", "user_id": 1, "generation_id": 1, "task_id": 1}
    for method, path in admin_routes:
        url = fill(path, values)
        page = not path.startswith("/api")
        for who, client, headers in [
            ("labeler", ann.client, {"X-CSRF-Token": ann.csrf}),
            ("anonymous", anonymous, {}),
            ("wrong token", anonymous, {"Authorization": "Bearer wrong-token"}),
        ]:
            response = client.request(method, url, json={}, headers=headers, follow_redirects=False)
            tried += 1
            if page and who != "wrong token":
                ok = response.status_code == 303 and response.headers["location"] == "/admin/login"
            else:
                ok = response.status_code == {"labeler": 403}.get(who, 401)
            assert ok, (who, method, url, response.status_code)
            refused += ok
    assert snapshot(app) == before  # nothing changed by any refused request
    # And the admin's own token does work on them (the refusals are about identity, not broken routes).
    assert TestClient(app).get(f"/api/admin/projects/{pid}/progress", headers=ADMIN).status_code == 200
    print(
        f"\n[isolation] {tried} endpoint x identity combinations tried, {refused} refused "
        f"({len(labeler_routes)} labeler endpoints x {len(bobs)} foreign ids x 2 identities + the queue; "
        f"{len(admin_routes)} admin endpoints x 3 identities)"
    )
    assert tried == refused
