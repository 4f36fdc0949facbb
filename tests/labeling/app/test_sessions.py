"""Sessions that end: admin sessions bound to the admin token the server runs with, idle and absolute expiry,
password change, labeler deactivation, "log out everywhere", and Secure cookies (issue 25)."""

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from serve_testing import ADMIN, PASSWORD, TOKEN, Labeler, app, make_app  # noqa: F401 (fixture)

from prefer.cli import main
from prefer.labeling.app import deps
from prefer.labeling.app.models import now as real_now
from prefer.labeling.app.server import create_app

OTHER_TOKEN = "another-admin-token-9876543210"


def labeler_id(client, username):
    users = client.get("/api/admin/labelers", headers=ADMIN).json()["labelers"]
    return next(u["id"] for u in users if u["username"] == username)


def test_an_admin_cookie_from_an_old_token_is_refused_after_a_restart_with_a_new_one(tmp_path):
    url = str(tmp_path / "labels.db")
    first = make_app(url)
    admin = TestClient(first)
    csrf = admin.post("/api/admin/login", json={"token": TOKEN}).json()["csrf_token"]
    cookie = admin.cookies.get("prefer_session")
    assert admin.get("/api/admin/projects").status_code == 200
    first.state.engine.dispose()

    # The same database, the server restarted with the same token: the session goes on.
    same = create_app(url, TOKEN, hash_profile="test")
    assert TestClient(same, cookies={"prefer_session": cookie}).get("/api/admin/projects").status_code == 200
    same.state.engine.dispose()

    # Restarted with a new token (the old one leaked, say): the old cookie opens nothing.
    restarted = create_app(url, OTHER_TOKEN, hash_profile="test")
    old = TestClient(restarted, cookies={"prefer_session": cookie})
    headers = {"X-CSRF-Token": csrf}
    assert old.get("/api/admin/projects").status_code == 401
    assert old.post("/api/admin/projects", json={"name": "p"}, headers=headers).status_code == 401
    labeler = {"username": "eve", "password": PASSWORD}
    assert old.post("/api/admin/labelers", json=labeler, headers=headers).status_code == 401
    assert old.get("/admin", follow_redirects=False).headers["location"] == "/admin/login"
    new = TestClient(restarted, headers={"Authorization": f"Bearer {OTHER_TOKEN}"})
    assert new.get("/api/admin/projects").json()["projects"] == [] and new.get("/api/admin/labelers").json() == {
        "labelers": []
    }
    restarted.state.engine.dispose()


def test_sessions_end_when_idle_and_after_their_lifetime(tmp_path, monkeypatch):
    url = str(tmp_path / "labels.db")
    make_app(url).state.engine.dispose()
    application = create_app(url, TOKEN, hash_profile="test", session_idle_minutes=30, session_max_hours=2)
    TestClient(application).post("/api/admin/labelers", json={"username": "ann", "password": PASSWORD}, headers=ADMIN)
    start = real_now()
    clock = {"t": start}
    monkeypatch.setattr(deps, "now", lambda: clock["t"])
    ann = Labeler(application, "ann")
    idle = Labeler(application, "ann")

    def status(who, minutes):
        clock["t"] = start + timedelta(minutes=minutes)
        return who.request("GET", "/api/queue").status_code

    # Used every 25 minutes (< 30 idle), ann's session lives until 120 minutes after its login, no longer:
    assert [status(ann, m) for m in (25, 50, 75, 100, 115)] == [200] * 5
    assert status(ann, 121) == 401  # absolute: 121 > 2 h, though it was used 6 minutes before
    # The other session, unused since its login at 0, ended at 30 minutes idle.
    monkeypatch.setattr(deps, "now", lambda: start + timedelta(minutes=29))
    assert idle.request("GET", "/api/queue").status_code == 200
    monkeypatch.setattr(deps, "now", lambda: start + timedelta(minutes=29 + 31))
    assert idle.request("GET", "/api/queue").status_code == 401  # 31 minutes since its last use at 29
    application.state.engine.dispose()


def test_password_change_ends_the_other_sessions(app):
    client = TestClient(app)
    client.post("/api/admin/labelers", json={"username": "ann", "password": PASSWORD}, headers=ADMIN)
    ann, elsewhere = Labeler(app, "ann"), Labeler(app, "ann")
    wrong = ann.request("POST", "/api/password", json={"current_password": "nope", "new_password": "new password 1"})
    assert wrong.status_code == 403 and wrong.json()["detail"].startswith("current_password")
    short = ann.request("POST", "/api/password", json={"current_password": PASSWORD, "new_password": "short"})
    assert short.status_code == 422 and short.json()["detail"].startswith("new_password")
    changed = ann.request(
        "POST", "/api/password", json={"current_password": PASSWORD, "new_password": "new password 1"}
    )
    assert changed.json() == {"password_changed": True, "other_sessions_ended": 1}
    assert ann.request("GET", "/api/queue").status_code == 200  # the session that changed it goes on
    assert elsewhere.request("GET", "/api/queue").status_code == 401
    assert client.post("/api/login", json={"username": "ann", "password": PASSWORD}).status_code == 401
    Labeler(app, "ann", "new password 1")
    # The admin token has no password to change here; the bearer admin is refused.
    assert (
        client.post("/api/password", json={"current_password": "x", "new_password": "y" * 8}, headers=ADMIN).status_code
        == 403
    )


def test_a_deactivated_labeler_cannot_log_in_and_its_sessions_end(app):
    client = TestClient(app)
    client.post("/api/admin/labelers", json={"username": "ann", "password": PASSWORD}, headers=ADMIN)
    uid = labeler_id(client, "ann")
    ann = Labeler(app, "ann")
    off = client.patch(f"/api/admin/labelers/{uid}", json={"active": False}, headers=ADMIN)
    assert off.json() == {"id": uid, "username": "ann", "active": False, "sessions_ended": 1}
    assert ann.request("GET", "/api/queue").status_code == 401
    assert client.post("/api/login", json={"username": "ann", "password": PASSWORD}).status_code == 401
    assert client.get("/api/admin/labelers", headers=ADMIN).json()["labelers"][0]["active"] is False
    on = client.patch(f"/api/admin/labelers/{uid}", json={"active": True}, headers=ADMIN)
    assert on.json()["active"] is True and on.json()["sessions_ended"] == 0
    Labeler(app, "ann")
    # The admin sets a new password: the labeler's sessions end, the new password logs in.
    reset = client.patch(f"/api/admin/labelers/{uid}", json={"password": "reset password 2"}, headers=ADMIN)
    assert reset.json()["sessions_ended"] == 1
    Labeler(app, "ann", "reset password 2")
    assert client.post(f"/api/admin/labelers/{uid}/logout", headers=ADMIN).json() == {"id": uid, "sessions_ended": 1}
    missing = client.patch("/api/admin/labelers/999", json={"active": False}, headers=ADMIN)
    assert missing.status_code == 404 and "user_id 999" in missing.json()["detail"]


def test_log_out_everywhere(app):
    client = TestClient(app)
    client.post("/api/admin/labelers", json={"username": "ann", "password": PASSWORD}, headers=ADMIN)
    client.post("/api/admin/labelers", json={"username": "bob", "password": PASSWORD}, headers=ADMIN)
    phone, laptop, bob = Labeler(app, "ann"), Labeler(app, "ann"), Labeler(app, "bob")
    assert phone.client.post("/api/logout/everywhere").status_code == 403  # CSRF, as every state change
    assert phone.request("POST", "/api/logout/everywhere").json() == {"logged_out": True, "sessions_ended": 2}
    assert phone.request("GET", "/api/queue").status_code == 401
    assert laptop.request("GET", "/api/queue").status_code == 401
    assert bob.request("GET", "/api/queue").status_code == 200  # another labeler's session is not touched
    admins = [TestClient(app) for _ in range(2)]
    csrf = [a.post("/api/admin/login", json={"token": TOKEN}).json()["csrf_token"] for a in admins]
    ended = admins[0].post("/api/logout/everywhere", headers={"X-CSRF-Token": csrf[0]}).json()
    assert ended["sessions_ended"] == 2 and admins[1].get("/api/admin/projects").status_code == 401


@pytest.mark.parametrize("secure", [False, True])
def test_secure_cookies(tmp_path, secure):
    url = str(tmp_path / "labels.db")
    make_app(url).state.engine.dispose()
    application = create_app(url, TOKEN, hash_profile="test", secure_cookies=secure)
    response = TestClient(application).post("/api/admin/login", json={"token": TOKEN})
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and ("; secure" in cookie) is secure
    assert "max-age=43200" in cookie  # the default lifetime, 12 h = 43,200 s
    application.state.engine.dispose()


def test_serve_passes_the_session_options(monkeypatch, tmp_path, capsys):
    import prefer.labeling.app.server as server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda **kwargs: seen.update(kwargs))
    args = ["serve", "--db", str(tmp_path / "x.db"), "--secure-cookies", "--session-idle-minutes", "15"]
    assert main([*args, "--session-max-hours", "8", "--admin-token", TOKEN]) == 0
    assert seen["secure_cookies"] is True and seen["session_idle_minutes"] == 15 and seen["session_max_hours"] == 8
    assert main(["serve", "--db", str(tmp_path / "x.db"), "--session-idle-minutes", "0"]) == 2
    assert "--session-idle-minutes: must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--secure-cookies" in out and "--session-idle-minutes" in out and "--session-max-hours" in out
    # The workers read them from the environment prefer serve sets.
    make_app(str(tmp_path / "env.db")).state.engine.dispose()
    monkeypatch.setenv("PREFER_SERVE_DB", str(tmp_path / "env.db"))
    monkeypatch.setenv("PREFER_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("PREFER_SERVE_SECURE_COOKIES", "1")
    monkeypatch.setenv("PREFER_SERVE_SESSION_IDLE_MINUTES", "15.0")
    application = server.app_from_env()
    assert application.state.secure_cookies and application.state.session_idle == timedelta(minutes=15)
    application.state.engine.dispose()


def test_the_account_page(app):
    TestClient(app).post("/api/admin/labelers", json={"username": "ann", "password": PASSWORD}, headers=ADMIN)
    ann = Labeler(app, "ann")
    page = ann.client.get("/account")
    assert page.status_code == 200 and 'id="password-form"' in page.text and 'id="logout-everywhere"' in page.text
    assert TestClient(app).get("/account", follow_redirects=False).headers["location"] == "/login"
