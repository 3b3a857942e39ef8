"""The access matrix over EVERY route the app has, derived from the guards the routes
declare, so a route added tomorrow is checked without anyone remembering to.

For each route and each caller (nobody, client key, admin key, viewer, editor and
admin sessions) the response must be: 401 (API) or a redirect to the login page
(web) without credentials; 403 for a caller the guard does not admit; anything but
401/403 for a caller it admits (a 404 for the placeholder experiment key is fine:
it means the guard let the caller through).
"""

from __future__ import annotations

import re

from expplatform.auth import role_at_least

from .conftest import sign_in

CALLERS = ["nobody", "client_key", "admin_key", "viewer", "editor", "admin"]
PLACEHOLDERS = {
    "key": "no-such-experiment",
    "prefix": "xp_none",
    "user_id": "999999",
    "action": "start",
    "job_id": "999999",
}


def _routes(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        access = getattr(view, "required_access", None)
        role = getattr(view, "required_role", None)
        path = rule.rule
        for name in rule.arguments:
            # <name>, <int:name>, <int(max=...):name>: an argument with a converter is a number here.
            path = re.sub(rf"<{name}>", PLACEHOLDERS.get(name, "x"), path)
            path = re.sub(rf"<[a-z]+(\([^)]*\))?:{name}>", PLACEHOLDERS.get(name, "1"), path)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield path, method, access, role


def _admits(caller: str, access, role) -> bool:
    if access == "public":
        return True
    if role is not None:  # a web page
        return caller in {"viewer", "editor", "admin"} and role_at_least(caller, role)
    if caller.endswith("_key"):
        return caller.removesuffix("_key") == access["scope"]
    return access["session_role"] is not None and role_at_least(caller, access["session_role"])


def test_access_matrix_over_every_route(app, make_key, make_user):
    keys = {"client_key": make_key("client"), "admin_key": make_key("admin")}
    users = {role: make_user(role, f"{role}-matrix@example.com") for role in ("viewer", "editor", "admin")}
    routes = list(_routes(app))
    assert len(routes) > 20  # the matrix is really over the app
    failures = []
    for caller in CALLERS:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {keys[caller]}"} if caller in keys else {}
        for path, method, access, role in routes:
            if caller in users:  # again before every request: POST /logout ends the session
                sign_in(client, app, users[caller])
            response = client.open(path, method=method, headers=headers, json={} if method != "GET" else None)
            status = response.status_code
            admitted = _admits(caller, access, role)
            if admitted:
                ok = status not in (401, 403)
            elif caller == "nobody":
                ok = status == 401 if role is None else (status == 302 and "/login" in response.location)
            elif role is not None and caller.endswith("_key"):
                ok = status == 302 and "/login" in response.location  # keys do not log in to web pages
            else:
                ok = status == 403
            if not ok:
                failures.append(f"{caller:10} {method:6} {path} -> {status}")
    assert failures == [], "\n".join(failures)
