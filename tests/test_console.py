"""The operator console and /metrics, against real node processes.

One network per module (a notary, a bank, a seller and a buyer running the trade sample,
plus flows of tests/consoleflows.py on the seller: sleeping, hospitalized, stepping),
driven by a real headless Chromium through Selenium. The browser tests skip, saying why,
only where no Chromium and chromedriver can be found (``.ci/install-browser`` installs
Debian's). The screenshots they take are the ones docs/console.md shows (refresh them
with ``GREENFLOW_UPDATE_SCREENSHOTS=1``).
"""
from __future__ import annotations

import base64
import os
import shutil
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

from greenflow.network.node_config import hash_password, read_credentials
from greenflow.testing.node_processes import ProcessNetwork

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMAGES = os.path.join(ROOT, "docs", "images")
APP = "samples.trade"
NOTARY, BANK, SELLER, BUYER = "Notary", "Bank", "Seller", "Buyer"
VIEWER_PW = "look-but-do-not-touch"


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:  # a 303 is an answer to look at here
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class Site:
    """The seller's console over plain HTTP (urllib, no browser)."""

    def __init__(self, net: ProcessNetwork, name: str) -> None:
        cfg = net.config(name)
        host, port = cfg.rpc_address
        self.url = f"http://{host}:{port}"
        self.user, self.password = read_credentials(net.dir(name))  # type: ignore[misc]

    def request(self, path: str, *, auth: Optional[tuple[str, str]] = None, method: str = "GET",
                body: Optional[bytes] = None, headers: Optional[dict] = None,
                timeout: float = 10.0) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            req.add_header("Authorization", "Basic " + token)
        try:
            with _OPENER.open(req, timeout=timeout) as r:
                # An event stream never ends by itself: its first event is enough.
                data = r.read(200) if "event-stream" in r.headers.get("Content-Type", "") else r.read()
                return r.status, dict(r.headers), data
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def get(self, path: str, **kw: Any) -> tuple[int, dict, bytes]:
        return self.request(path, auth=(self.user, self.password), **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    marker = str(root / "code-changed")
    with ProcessNetwork(root / "net", [BANK, SELLER, BUYER], notary=NOTARY,
                        apps=[APP, "consoleflows"], pythonpath=[HERE]) as net:
        with open(os.path.join(net.dir(SELLER), "node.toml"), "a", encoding="utf-8") as fh:
            fh.write(f'\n[[rpc_users]]\nusername = "viewer"\npassword_hash = "{hash_password(VIEWER_PW)}"\n'
                     'permissions = ["read"]\n')
        net.start_all(wait=60)
        bank, seller, buyer = net.client(BANK), net.client(SELLER), net.client(BUYER)
        for client, flow, args in (
                (buyer, "SetPriceLimitFlow", {"amount": 1200}),
                (bank, "IssueCashFlow", {"amount": 1500, "owner": BUYER, "notary": NOTARY}),
                (seller, "IssuePaperFlow", {"reference": None, "face_value": 1000, "notary": NOTARY}),
                (seller, "SellPaperFlow", {"buyer": BUYER, "price": 900})):
            out = client.start_flow(f"{APP}.{flow}", args, wait=60)
            assert out["status"] == "COMPLETED", out
        nappers = [seller.start_flow("consoleflows.Napper", {"parcel": p})["flow_id"]
                   for p in ("blue box", "green crate", "red tin")]
        fickles = [seller.start_flow("consoleflows.Fickle", {"marker": marker, "seconds": 1.0})["flow_id"]
                   for _ in range(2)]
        wait_for(lambda: all(seller.flow(f)["status"] == "SUSPENDED" for f in nappers + fickles),
                 what="the sleeping flows to suspend")
        # Incompatible code is deployed: after the restart the Fickles no longer match
        # their journals when they wake, and the hospital parks them for an operator.
        open(marker, "w").close()
        net.stop(SELLER)
        net.start(SELLER, wait=60)
        seller = net.client(SELLER)
        wait_for(lambda: all(seller.flow(f)["status"] == "HOSPITALIZED" for f in fickles),
                 timeout=30, what="the Fickle flows to be hospitalized")
        out = seller.start_flow(f"{APP}.IssuePaperFlow", {"reference": None, "face_value": 1000,
                                                           "notary": NOTARY}, wait=60)
        assert out["status"] == "COMPLETED", out
        failed = seller.start_flow(f"{APP}.SellPaperFlow", {"buyer": BUYER, "price": 5000}, wait=60)
        assert failed["status"] == "FAILED" and "limit" in failed["error"]["message"], failed
        yield {"net": net, "site": Site(net, SELLER), "nappers": nappers, "fickles": fickles,
               "failed": failed["flow_id"]}


# ---------------------------------------------------------------------- no browser
def test_without_a_password_every_page_and_api_call_answers_401(world):
    site, napper = world["site"], world["nappers"][0]
    paths = ["/console", "/console/", "/console/flows", "/console/flows?status=HOSPITALIZED",
             f"/console/flows/{napper}", "/console/vault", "/console/node", "/console/login",
             "/console/nonexistent", "/console/api/flows", f"/console/api/flows/{napper}",
             f"/console/api/flows/{napper}/events", "/console/api/node", "/console/api/vault",
             "/console/static/console.js", "/console/static/console.css", "/metrics",
             "/api/v1/node", "/api/v1/flows"]
    for path in paths:
        status, headers, body = site.request(path)
        assert status == 401, (path, status, body[:200])
        assert "WWW-Authenticate" in headers, path
        assert b"blue box" not in body and b"parcel" not in body, path
    for path in (f"/console/api/flows/{napper}/kill", f"/console/api/flows/{napper}/retry",
                 "/console/node/draining", "/console/logout"):
        status, _, _ = site.request(path, method="POST", body=b"{}",
                                    headers={"X-Greenflow-Console": "1"})
        assert status == 401, path
    # A wrong password is no better than none, and a forged session cookie neither.
    assert site.request("/console/flows", auth=(site.user, "wrong"))[0] == 401
    assert site.request("/metrics", auth=(site.user, "wrong"))[0] == 401
    assert site.request("/console/api/flows", headers={"Cookie": "greenflow_console=forged"})[0] == 401
    status, _, body = site.request("/console/login", method="POST",
                                   body=f"username={site.user}&password=nope".encode())
    assert status == 401 and b"wrong username or password" in body
    # Unauthenticated pages answer with the login form; the flow is still there.
    assert b'id="login-form"' in site.request("/console/flows")[2]
    assert world["net"].client(SELLER).flow(napper)["status"] == "HIBERNATED"


def test_console_json_api_with_basic_auth(world):
    site = world["site"]
    import json

    status, _, body = site.get("/console/api/flows?status=HOSPITALIZED")
    doc = json.loads(body)
    assert status == 200 and {f["id"] for f in doc["flows"]} == set(world["fickles"])
    assert doc["counts"]["HOSPITALIZED"] == 2 and doc["counts"]["HIBERNATED"] >= 3
    assert doc["counts"]["COMPLETED"] >= 2 and doc["counts"]["FAILED"] >= 1
    status, _, body = site.get("/console/api/flows?since=banana")
    assert status == 400 and b"since" in body
    for size in ("0", "-3"):   # (a page of one flow, before, without a word)
        status, _, body = site.get(f"/console/api/flows?size={size}")
        assert status == 400 and b"size" in body
    detail = json.loads(site.get(f"/console/api/flows/{world['fickles'][0]}")[2])
    assert "NonDeterminismError" in detail["hospital"]["diagnosis"]
    assert site.get("/console/api/flows/nope")[0] == 404
    # Actions with basic authentication need the console header (no cross-site forms).
    assert site.get(f"/console/api/flows/{world['nappers'][2]}/kill", method="POST", body=b"{}")[0] == 403


def test_a_read_only_user_sees_everything_and_may_change_nothing(world):
    site, napper, fickle = world["site"], world["nappers"][1], world["fickles"][1]
    viewer = ("viewer", VIEWER_PW)
    for path in ("/console/flows", f"/console/flows/{napper}", "/console/node", "/console/vault",
                 "/console/api/flows", "/metrics"):
        assert site.request(path, auth=viewer)[0] == 200, path
    page = site.request(f"/console/flows/{fickle}", auth=viewer)[2]
    assert b'id="kill"' not in page and b'id="retry"' not in page
    assert b'id="kill"' in site.get(f"/console/flows/{fickle}")[2]
    for action in ("kill", "retry"):
        status, _, body = site.request(f"/console/api/flows/{fickle}/{action}", auth=viewer,
                                       method="POST", body=b"{}",
                                       headers={"X-Greenflow-Console": "1"})
        assert status == 403 and b"viewer" in body, (action, body)
    status, _, _ = site.request("/console/node/draining", auth=viewer, method="POST",
                                body=b"enabled=true", headers={"X-Greenflow-Console": "1"})
    assert status == 403
    assert world["net"].client(SELLER).flow(fickle)["status"] == "HOSPITALIZED"


def test_a_browser_session_needs_its_csrf_token_to_act_and_ends_at_logout(world):
    import re

    site, seller = world["site"], world["net"].client(SELLER)
    fid = seller.start_flow("consoleflows.Napper", {"parcel": "csrf"})["flow_id"]
    status, headers, _ = site.request("/console/login", method="POST",
                                      body=f"username={site.user}&password={site.password}".encode())
    assert status == 303 and headers["Location"] == "/console/flows"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    jar = {"Cookie": cookie}
    status, _, page = site.request(f"/console/flows/{fid}", headers=jar)
    assert status == 200
    token = re.search(rb'name="csrf-token" content="([^"]+)"', page).group(1).decode()
    kill = f"/console/api/flows/{fid}/kill"
    assert site.request(kill, method="POST", body=b"{}", headers=jar)[0] == 403
    assert site.request(kill, method="POST", body=b"{}", headers={**jar, "X-CSRF-Token": "x" + token})[0] == 403
    assert seller.flow(fid)["status"] == "SUSPENDED"
    status, _, body = site.request(kill, method="POST", body=b"{}", headers={**jar, "X-CSRF-Token": token})
    assert status == 200 and b'"done": true' in body
    assert seller.flow(fid)["status"] == "KILLED"
    assert site.request("/console/logout", method="POST", body=f"csrf={token}".encode(),
                        headers=jar)[0] == 303
    assert site.request("/console/api/flows", headers=jar)[0] == 401


def metrics(site: Site) -> dict:
    status, headers, body = site.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    out: dict = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_the_counters_move_as_flows_run(world):
    site, seller = world["site"], world["net"].client(SELLER)
    before = metrics(site)
    stepper = ("consoleflows.Stepper",)
    started = lambda m: m.get(("greenflow_flows_started_total", (("flow_class", stepper[0]),)), 0)  # noqa: E731
    finished = lambda m: m.get(("greenflow_flows_finished_total", (("flow_class", stepper[0]),)), 0)  # noqa: E731
    out = seller.start_flow("consoleflows.Stepper", {"pause": 0.05}, wait=30)
    assert out["status"] == "COMPLETED"
    out = seller.start_flow(f"{APP}.IssuePaperFlow", {"reference": None, "face_value": 10,
                                                       "notary": NOTARY}, wait=30)
    assert out["status"] == "COMPLETED"
    sale = seller.start_flow(f"{APP}.SellPaperFlow", {"buyer": BUYER, "price": 5000}, wait=30)
    assert sale["status"] == "FAILED"  # above the buyer's limit: it said no
    after = metrics(site)
    assert started(after) == started(before) + 1 and finished(after) == finished(before) + 1
    assert after[("greenflow_suspensions_total", ())] >= before[("greenflow_suspensions_total", ())] + 3
    assert after[("greenflow_commit_seconds_count", ())] > before[("greenflow_commit_seconds_count", ())]
    assert after[("greenflow_commit_batch_writes_count", ())] > before[("greenflow_commit_batch_writes_count", ())]
    for name in ("greenflow_messages_sent_total", "greenflow_messages_received_total"):
        key = (name, (("peer", BUYER),))
        assert after[key] > before.get(key, 0), name
    assert after[("greenflow_link_up", (("direction", "out"), ("peer", BUYER)))] == 1
    failed = ("greenflow_flows_failed_total", (("flow_class", sale["flow_class"]),))
    assert after[failed] == before.get(failed, 0) + 1
    assert after[("greenflow_flows", (("status", "HOSPITALIZED"),))] == 2
    fickle = (("flow_class", "consoleflows.Fickle"),)
    assert after[("greenflow_flows_hospitalized_total", fickle)] == 2
    assert after[("greenflow_flows_hibernated", ())] >= 5
    assert after[("greenflow_store_bytes", ())] > 0


def test_two_nodes_in_one_process_have_their_own_metrics(tmp_path):
    from greenflow.rpc.metrics import NodeMetrics
    from greenflow.node.node import Node

    with Node(str(tmp_path / "a"), "O=A,L=London,C=GB", apps=["consoleflows"]) as a, \
            Node(str(tmp_path / "b"), "O=B,L=Paris,C=FR", apps=["consoleflows"]) as b:
        ma, mb = NodeMetrics(a), NodeMetrics(b)
        from consoleflows import Stepper
        assert a.start_flow(Stepper(pause=0.01)).result(timeout=30) == 3
        fa = {f.name: f for f in text_string_to_metric_families(ma.exposition()[1].decode())}
        fb = {f.name: f for f in text_string_to_metric_families(mb.exposition()[1].decode())}
        assert [s.value for s in fa["greenflow_flows_started"].samples if s.name.endswith("_total")] == [1]
        assert [s for s in fb["greenflow_flows_started"].samples if s.name.endswith("_total")] == []


# ---------------------------------------------------------------------- the browser
def _find_browser() -> tuple[Optional[str], Optional[str], str]:
    browser = next((p for p in (os.environ.get("GREENFLOW_CHROMIUM"), shutil.which("chromium"),
                                shutil.which("chromium-browser"), shutil.which("google-chrome"))
                    if p), None)
    driver = os.environ.get("GREENFLOW_CHROMEDRIVER") or shutil.which("chromedriver")
    missing = [what for what, p in (("chromium", browser), ("chromedriver", driver)) if not p]
    return browser, driver, ", ".join(missing)


@pytest.fixture(scope="module")
def browser(world):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install '.[test]')")
    binary, driver_path, missing = _find_browser()
    if missing:
        pytest.skip(f"no headless browser for the console tests: {missing} not found "
                    "(run .ci/install-browser, or apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,900", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    drv.implicitly_wait(0)
    os.makedirs(IMAGES, exist_ok=True)
    try:
        yield drv
    finally:
        drv.quit()


def shot(drv: Any, name: str) -> None:
    """A screenshot of the whole page, for docs/console.md: written into docs/images/
    when it is missing there or GREENFLOW_UPDATE_SCREENSHOTS=1 (ids and times differ at
    every run, so an ordinary test run leaves the committed ones alone)."""
    height = drv.execute_script("return document.documentElement.scrollHeight;")
    drv.set_window_size(1360, max(500, min(int(height) + 140, 2200)))
    path = os.path.join(IMAGES, f"console-{name}.png")
    try:
        png = drv.get_screenshot_as_png()
    finally:
        drv.set_window_size(1360, 900)
    assert png.startswith(b"\x89PNG") and len(png) > 5000, f"screenshot {name} is empty"
    if os.environ.get("GREENFLOW_UPDATE_SCREENSHOTS") == "1" or not os.path.exists(path):
        with open(path, "wb") as fh:
            fh.write(png)


def css(drv: Any, selector: str) -> list:
    from selenium.webdriver.common.by import By
    return drv.find_elements(By.CSS_SELECTOR, selector)


def attrs(drv: Any, selector: str, name: str) -> list:
    """The attribute of each element matching ``selector``, read in one script (the live
    parts of a page are replaced while it is open: element handles go stale)."""
    return drv.execute_script(
        "var name = arguments[1]; return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(function (e) { return e.getAttribute(name); });", selector, name) or []


def login(drv: Any, site: Site, path: str = "/console/flows") -> None:
    drv.get(site.url + path)
    if css(drv, "#login-form"):
        css(drv, "#username")[0].send_keys(site.user)
        css(drv, "#password")[0].send_keys(site.password)
        css(drv, "#login")[0].click()
        wait_for(lambda: not css(drv, "#login-form"), what="the login to go through")


def test_log_in_and_filter_the_flow_list(world, browser):
    site = world["site"]
    browser.delete_all_cookies()
    browser.get(site.url + "/console/flows")
    assert css(browser, "#login-form"), "an unauthenticated visit shows the login form"
    css(browser, "#username")[0].send_keys(site.user)
    css(browser, "#password")[0].send_keys("not the password")
    shot(browser, "login")
    css(browser, "#login")[0].click()
    error = wait_for(lambda: css(browser, "#login-error"), what="the login error")
    assert "wrong username or password" in error[0].text
    login(browser, site)
    assert browser.current_url.endswith("/console/flows")
    rows = css(browser, "#flow-table tbody tr[data-flow-id]")
    assert len(rows) >= 8
    assert int(css(browser, "#count-HOSPITALIZED")[0].text) == 2
    shot(browser, "flows")
    # The open list follows the node: a flow started now appears, counted, without a reload.
    browser.execute_script("window.__same_page = true;")
    suspended = int(css(browser, "#count-SUSPENDED")[0].text)
    fresh = world["net"].client(SELLER).start_flow("consoleflows.Napper", {"parcel": "new"})["flow_id"]
    wait_for(lambda: fresh in attrs(browser, "#flow-table tbody tr", "data-flow-id"),
             timeout=15, what="the new flow to appear in the open list")
    wait_for(lambda: attrs(browser, "#count-SUSPENDED", "data-n") == [str(suspended + 1)],
             timeout=15, what="the SUSPENDED count to go up")
    assert browser.execute_script("return window.__same_page === true;"), "the page was reloaded"

    from selenium.webdriver.support.ui import Select
    Select(css(browser, "#f-status")[0]).select_by_value("HOSPITALIZED")  # submits at once
    wait_for(lambda: "status=HOSPITALIZED" in browser.current_url, what="the status filter")
    ids = {r.get_attribute("data-flow-id") for r in css(browser, "#flow-table tbody tr[data-flow-id]")}
    assert ids == set(world["fickles"])
    shot(browser, "flows-hospitalized")

    browser.get(site.url + "/console/flows")
    css(browser, "#f-class")[0].send_keys("Napper")
    css(browser, "#f-q")[0].send_keys(world["nappers"][1][-10:])
    css(browser, "#f-apply")[0].click()
    wait_for(lambda: "flow_class=Napper" in browser.current_url, what="the class filter")
    rows = css(browser, "#flow-table tbody tr[data-flow-id]")
    assert [r.get_attribute("data-flow-id") for r in rows] == [world["nappers"][1]]


def test_a_suspended_flow_shows_its_named_locals_from_disk(world, browser):
    site, fid = world["site"], world["nappers"][0]
    login(browser, site, f"/console/flows/{fid}")
    assert css(browser, "#flow-status")[0].get_attribute("data-status") == "HIBERNATED"
    local = css(browser, '#stack tr[data-local="parcel_label"] td')[0]
    assert local.text == "'parcel:blue box'"
    assert css(browser, '#stack tr[data-local="api_token"] td')[0].text == "<redacted>"
    assert "s3cr3t" not in browser.page_source
    assert "sleep 600.0s" in css(browser, "#waiting-for")[0].text
    current = css(browser, "#progress-tree li.current")
    assert [li.get_attribute("data-step") for li in current] == ["Waiting for the courier"]
    assert "sleep 600.0s" in css(browser, "#journal")[0].text
    shot(browser, "flow-sleeping")


def test_a_hospitalized_flow_shows_the_diagnosis_and_a_retry_button(world, browser):
    site, fid = world["site"], world["fickles"][0]
    login(browser, site, f"/console/flows/{fid}")
    assert "NonDeterminismError" in css(browser, "#hospital .diagnosis")[0].text
    assert css(browser, "#retry") and css(browser, "#kill")
    shot(browser, "flow-hospitalized")


def test_a_progress_step_changes_live(world, browser):
    site, seller = world["site"], world["net"].client(SELLER)
    fid = seller.start_flow("consoleflows.Stepper", {"pause": 2.5})["flow_id"]
    login(browser, site, f"/console/flows/{fid}")
    browser.execute_script("window.__same_page = true;")
    first = wait_for(lambda: attrs(browser, "#progress-tree li.current", "data-step"),
                     what="a current step")
    assert first[0] in ("Step one", "Step two")
    nxt = "Step two" if first[0] == "Step one" else "Step three"
    wait_for(lambda: attrs(browser, "#progress-tree li.current", "data-step") == [nxt],
             timeout=15, what=f"the step to become {nxt!r} on the open page")
    # It came as a server-sent event from the node's progress stream, not only by polling.
    wait_for(lambda: attrs(browser, "#live", "data-last-event") in ([nxt], ["Step three"]),
             timeout=10, what="the progress event")
    assert browser.execute_script("return window.__same_page === true;"), "the page was reloaded"
    assert first[0] in attrs(browser, "#progress-tree li.done", "data-step")
    shot(browser, "flow-progress")


def test_kill_a_flow_with_the_button(world, browser):
    site, fid = world["site"], world["nappers"][2]
    login(browser, site, f"/console/flows/{fid}")
    css(browser, "#kill")[0].click()
    alert = browser.switch_to.alert
    assert "Kill flow" in alert.text
    alert.dismiss()  # asked first: nothing happens without the confirmation
    time.sleep(0.3)
    assert world["net"].client(SELLER).flow(fid)["status"] == "HIBERNATED"
    css(browser, "#kill")[0].click()
    browser.switch_to.alert.accept()
    wait_for(lambda: attrs(browser, "#flow-status", "data-status") == ["KILLED"],
             what="the page to show KILLED")
    assert world["net"].client(SELLER).flow(fid)["status"] == "KILLED"
    shot(browser, "flow-killed")


def test_vault_and_node_pages(world, browser):
    site = world["site"]
    login(browser, site, "/console/vault")
    assert len(css(browser, "#transactions tbody tr")) >= 2
    types = css(browser, "#state-types a")
    assert any("CommercialPaper" in t.text for t in types)
    shot(browser, "vault")
    browser.get(site.url + "/console/node")
    assert SELLER in css(browser, "#node-info")[0].text
    peers = {tr.get_attribute("data-peer"): tr.text for tr in css(browser, "#peers tbody tr[data-peer]")}
    assert set(peers) == {NOTARY, BANK, BUYER}
    assert "up" in peers[BUYER]  # talked to since the restart (the refused sale)
    assert int(css(browser, "#hibernated")[0].text) >= 3
    assert css(browser, "#draining")[0].text == "off"
    shot(browser, "node")
