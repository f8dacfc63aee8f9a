"""Two users behind a real nginx with basic auth (issue 27): nginx sets X-Forwarded-User, cnnlab
(CNNLAB_USER_HEADER) tells the users apart. Neither sees, attaches to, stops or deletes the
other's jobs, runs or live feed; an admin (CNNLAB_ADMINS) sees both and stops them, and the owner's
page names who stopped it. Debian's nginx runs as the test's own child process on a free port.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_browser import button, open_page, set_number, wait_idle

from tests.servers import free_port, port_open, serve_dashboard

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}
NGINX_CONF = """
{user}
worker_processes 1;
error_log {prefix}/error.log;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        auth_basic "cnnlab";
        auth_basic_user_file {prefix}/htpasswd;
        client_max_body_size 1024m;
        location / {{
            proxy_pass http://127.0.0.1:{app_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-User $remote_user;
            proxy_read_timeout 86400;
            proxy_buffering off;
        }}
    }}
}}
"""


@pytest.fixture(scope="module")
def nginx() -> Path:
    """Debian's nginx; missing: a failure under CI, a skip with the reason elsewhere."""
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if Path(found).is_file():
        return Path(found)
    reason = "nginx is missing: install it with `apt-get install -y nginx`"
    if os.environ.get("CI"):
        pytest.fail(f"the two-user test needs nginx under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory, chromium: Path, nginx: Path) -> Iterator[str]:
    """cnnlab (user header on, root an admin) behind nginx with basic auth; yields nginx's URL."""
    env = {
        "CNNLAB_USER_HEADER": "X-Forwarded-User",
        "CNNLAB_ADMINS": "root",
        "CNNLAB_MAX_JOBS": "2",
    }
    with serve_dashboard(tmp_path_factory.mktemp("users-home"), ARTIFACTS, env) as app_url:
        prefix = tmp_path_factory.mktemp("nginx")
        # {PLAIN}: nginx's own clear-text scheme, so the test needs no htpasswd tool
        lines = [f"{user}:{{PLAIN}}{pw}" for user, pw in PASSWORDS.items()]
        (prefix / "htpasswd").write_text("\n".join(lines) + "\n")
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                user="user root;" if os.geteuid() == 0 else "",  # workers read the test's files
                prefix=prefix,
                port=port,
                app_port=app_url.rsplit(":", 1)[1],
            )
        )
        cmd = [str(nginx), "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + 30
            while not port_open(port):
                log = prefix / "error.log"
                assert proc.poll() is None, log.read_text() if log.exists() else "nginx exited"
                assert time.monotonic() < end, "nginx did not listen within 30 s"
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(30)


def _session(browser, url: str, user: str):
    """A browser context signed in (basic auth) as user, on the home page."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": user, "password": PASSWORDS[user]},
    )
    context.set_default_timeout(120_000)
    page = context.new_page()
    feeds: list[str] = []
    page.on("request", lambda r: feeds.append(r.url) if "/api/cnnlab/jobs/" in r.url else None)
    page.goto(url)
    wait_idle(page)
    return context, page, feeds


def _start_long_demo(page, feeds: list[str]) -> tuple[str, str]:
    """Demo digits, a long training started; returns (job id, the signed feed URL it polls)."""
    button(page, "Try it on the demo digits").click()
    page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=60_000)
    wait_idle(page)
    set_number(page, "Epochs", 1000)
    set_number(page, "Patience (0 = off)", 0)
    button(page, "Start").click()
    end = time.monotonic() + 120
    while not feeds:
        assert time.monotonic() < end, "the live view never polled its feed"
        page.wait_for_timeout(200)
    url = feeds[0]
    return re.search(r"/jobs/([0-9a-f]+)/live", url).group(1), url


def _sidebar(page) -> str:
    return page.get_by_test_id("stSidebar").inner_text()


def _run_id(context, feed_url: str) -> str:
    end = time.monotonic() + 120
    while True:
        run_id = context.request.get(feed_url).json().get("run_id")
        if run_id:
            return run_id
        assert time.monotonic() < end, "the job never got a run"
        time.sleep(0.5)


def test_two_users_behind_nginx_see_only_their_own_and_an_admin_sees_both(
    browser, proxied: str
) -> None:
    # a request without credentials never reaches the app
    anonymous = browser.new_context()
    assert anonymous.request.get(proxied).status == 401
    anonymous.close()

    a_ctx, alice, a_feeds = _session(browser, proxied, "alice")
    b_ctx, bob, b_feeds = _session(browser, proxied, "bob")
    r_ctx, root, _ = _session(browser, proxied, "root")
    try:
        assert "Signed in as: alice" in _sidebar(alice)
        a_job, a_feed = _start_long_demo(alice, a_feeds)
        b_job, b_feed = _start_long_demo(bob, b_feeds)
        a_run, b_run = _run_id(a_ctx, a_feed), _run_id(b_ctx, b_feed)

        # the live feed: each their own; the other's signed URL answers like an unknown job
        assert a_ctx.request.get(a_feed).status == 200
        assert b_ctx.request.get(a_feed).status == 404
        assert a_ctx.request.get(b_feed).status == 404
        assert r_ctx.request.get(a_feed).status == 200 and r_ctx.request.get(b_feed).status == 200

        # bob's dashboard: his job only, in the sidebar and on the Runs page
        bob.goto(f"{proxied}/runs")
        wait_idle(bob)
        text = bob.inner_text("body")
        assert "1 run(s) in" in text and a_run not in text
        assert _sidebar(bob).count("Training:") == 1
        # a link to alice's job does not attach bob to it (no Stop for him to press)
        bob.goto(f"{proxied}/train?job={a_job}")
        wait_idle(bob)
        assert a_run not in bob.inner_text("body")
        stops = bob.get_by_role("button", name="Stop")
        assert stops.count() == 0 or not stops.first.is_enabled()

        # the admin sees both jobs and both runs, and stops alice's
        root.reload()
        wait_idle(root)
        assert _sidebar(root).count("Training:") == 2
        open_page(root, "Runs")
        assert "2 run(s) in" in root.inner_text("body")
        root.goto(f"{proxied}/train?job={a_job}")
        wait_idle(root)
        button(root, "Stop").click()
        alice.get_by_text("Stopped by root").first.wait_for(timeout=60_000)
        open_page(alice, "Runs")
        text = alice.inner_text("body")
        assert "1 run(s) in" in text and b_run not in text

        # bob's own Stop works on his own job, and alice's run stays invisible to him
        bob.goto(f"{proxied}/train?job={b_job}")
        wait_idle(bob)
        button(bob, "Stop").click()
        bob.get_by_text("Stopped by you").first.wait_for(timeout=60_000)
        open_page(bob, "Runs")
        text = bob.inner_text("body")  # nothing of alice's to resume or delete
        assert "1 run(s) in" in text and a_run not in text
    finally:
        for ctx in (a_ctx, b_ctx, r_ctx):
            ctx.close()
