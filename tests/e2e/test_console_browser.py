"""test_console_browser — the operator console at /_sluice/ui/, in a real browser (issue 14).

Debian's chromium, headless, driven by python3-selenium through
chromium-driver, against the real binary and the mock upstream. What an
operator would notice: the page asks for the admin token and refuses a wrong
one; a request made through the gateway appears in the live table (fed by
/_sluice/requests/stream) without a reload; the filters narrow the table;
one request's page shows each attempt of a retried request and, for a cut
stream, the reason in words; the usage view's totals equal the sum of the
records; a reload with a broken config shows the error while the old config
keeps serving. No test may leave a script error or a blocked load (the
page's Content-Security-Policy allows this origin only) in the browser's
console, and every control has an accessible name.

Each view is saved as a screenshot in build/artifacts/console/ (or
$SLUICE_ARTIFACTS) for a person to look at. Never skipped: scripts/setup
installs chromium, chromium-driver and python3-selenium.
"""

import json
import os
import shutil
import sys
import tempfile
import time

try:
    import selenium  # noqa: F401
except ImportError:  # a python3 other than Debian's (pyenv, venv): use Debian's python3-selenium
    sys.path.append("/usr/lib/python3/dist-packages")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ADMIN_TOKEN = "console-admin-token-2718"
ARTIFACTS = os.environ.get("SLUICE_ARTIFACTS") or os.path.join(
    os.path.dirname(os.path.abspath(harness.SLUICE_BIN)), "artifacts", "console")

CHAT_JSON = json.dumps({
    "id": "chatcmpl-c", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
              "prompt_tokens_details": {"cached_tokens": 800}}})
CHAT_CHUNK = "data: " + json.dumps({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1,
                                    "model": "gpt-4.1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"},
                                                                     "finish_reason": None}]}) + "\n\n"
BROKEN_CONFIG = 'return { listen = { "127.0.0.1:@PORT@" }, workers = "many" }\n'


def scene(body=CHAT_JSON, status=200, repeat=1):
    return {"status": status, "headers": {"Content-Type": "application/json"}, "body": body, "repeat": repeat}


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


class ConsoleCase(harness.SluiceTestCase):
    def setUp(self):
        super().setUp()
        os.makedirs(ARTIFACTS, exist_ok=True)
        d = tempfile.mkdtemp(prefix="sluice-console-")
        self.addCleanup(shutil.rmtree, d, True)
        self.config_text = harness.sluice_config(self.mock.port, extra=(
            '  retry = { attempts = 2, base = 0.05, max = 0.1 },\n'
            '  history = { path = "%s/h.db", bodies = true },\n'
            '  admin = { token = "%s" },\n'
            '  prices = { ["gpt-4*"] = { input = 2.00, output = 8.00, cache_read = 0.50 } },\n'
            % (d, ADMIN_TOKEN)))
        # /_sluice/health needs the token too: start without the harness's wait
        s = harness.Sluice(self.config_text, wait=False)
        self.addCleanup(self._stop_and_check, s)
        self.sluice = s
        self.assertTrue(harness.wait_for(lambda: self.admin_get("health") is not None, 10),
                        "sluice did not start" + self.diag())
        self.driver = browser()
        self.addCleanup(self.driver.quit)
        self.addCleanup(self.check_console)
        self.allowed = ["status of 401"]  # a wrong token, on purpose
        self.base = "http://127.0.0.1:%d/_sluice/ui/" % s.port

    def check_console(self):
        """No script error and no blocked load (a CSP violation) while the test ran;
        only the failed statuses a test provokes on purpose (self.allowed) are let through."""
        errors = [e["message"] for e in self.driver.get_log("browser")
                  if e["level"] == "SEVERE" and not any(a in e["message"] for a in self.allowed)]
        self.assertEqual(errors, [], "the browser console reported errors")

    def admin_get(self, path):
        try:
            r = harness.request(self.sluice.port, "GET", "/_sluice/" + path,
                                headers={"Authorization": "Bearer " + ADMIN_TOKEN}, timeout=5)
        except OSError:
            return None
        return r.json() if r.status == 200 else None

    def records(self):
        return self.admin_get("requests?limit=1000")["items"]

    def shot(self, name, width=None, height=1000):
        if width or height != 1000:
            self.driver.set_window_size(width or 1400, height)
        self.driver.save_screenshot(os.path.join(ARTIFACTS, name + ".png"))
        if width or height != 1000:
            self.driver.set_window_size(1400, 1000)

    def wait(self, cond, timeout=10):
        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(cond)

    def sign_in(self, view=""):
        self.driver.get(self.base + view)
        box = self.wait(EC.visibility_of_element_located((By.ID, "token")))
        box.send_keys(ADMIN_TOKEN)
        box.submit()
        self.wait(EC.invisibility_of_element_located((By.ID, "token")))

    def chat(self, rid, ua="agent-a/1.0", model="gpt-4.1", stream=False):
        return self.post("/v1/chat/completions",
                         {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello"}]},
                         headers={"x-request-id": rid, "User-Agent": ua,
                                  "Authorization": "Bearer sk-client-not-stored-555"})

    def unlabelled_controls(self):
        """Form controls a screen reader would announce without a name."""
        return self.driver.execute_script(
            'return Array.from(document.querySelectorAll("main input, main select, main button"))'
            '.filter(function (c) { return !(c.labels && c.labels.length) && !c.getAttribute("aria-label")'
            ' && !c.textContent.trim(); }).map(function (c) { return c.outerHTML; });')

    def page_width(self):
        return self.driver.execute_script("return document.documentElement.scrollWidth;")

    def table_ids(self):
        # read in one script: the live table may be redrawn between two element lookups
        return self.driver.execute_script(
            'return Array.from(document.querySelectorAll("#requests tbody tr"), function (tr) { return tr.dataset.id; });')


class TokenTest(ConsoleCase):
    def test_the_page_refuses_a_wrong_token_and_loads_with_the_right_one(self):
        self.mock.enqueue(scene())
        self.assertEqual(self.chat("before-login").status, 200)
        self.driver.get(self.base)
        box = self.wait(EC.visibility_of_element_located((By.ID, "token")))
        self.assertEqual(self.driver.find_elements(By.ID, "requests"), [], "no data before the token")
        box.send_keys("not-the-token-000")
        box.submit()
        alert = self.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, "[role=alert]")))
        self.assertIn("refused", alert.text)
        self.assertEqual(self.driver.find_elements(By.ID, "requests"), [])
        self.shot("token-refused")
        box = self.driver.find_element(By.ID, "token")
        box.send_keys(ADMIN_TOKEN)
        box.submit()
        self.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, "#requests tbody tr")))
        self.assertEqual(self.table_ids(), ["before-login"])
        # kept for the tab: a reload of the page does not ask again
        self.driver.refresh()
        self.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, "#requests tbody tr")))
        self.assertEqual(self.driver.find_elements(By.ID, "token"), [])
        # the page is the binary's own: served without any other origin
        self.assertIn("default-src 'self'", harness.request(self.sluice.port, "GET", "/_sluice/ui/").header(
            "content-security-policy"))


class RequestsTest(ConsoleCase):
    def test_a_request_appears_in_the_live_table(self):
        self.sign_in()
        self.wait(EC.text_to_be_present_in_element((By.ID, "live"), "live:"))
        self.mock.enqueue(scene())
        self.assertEqual(self.chat("live-one").status, 200)
        # a deadline, not a measure of speed: the "within 2 s"
        WebDriverWait(self.driver, 2, poll_frequency=0.05).until(lambda d: "live-one" in self.table_ids())
        self.shot("requests-live")

    def test_filters_narrow_the_table(self):
        self.mock.enqueue([scene(), scene(), scene(status=400, body=json.dumps(
            {"error": {"message": "bad model", "type": "invalid_request_error"}}))])
        self.chat("from-a", ua="agent-a/1.0")
        self.chat("from-b", ua="agent-b/2.0")
        self.chat("bad-one", ua="agent-b/2.0")
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"}, "close_after": True,
                           "chunks": [{"data": CHAT_CHUNK}]})
        self.chat("cut-one", ua="agent-a/1.0", stream=True)
        self.sign_in()
        self.wait(lambda d: len(self.table_ids()) == 4)
        row = self.driver.find_element(By.CSS_SELECTOR, 'tr[data-id="bad-one"]')
        self.assertIn("error", row.get_attribute("class"))
        self.assertIn("partial", self.driver.find_element(By.CSS_SELECTOR, 'tr[data-id="cut-one"]').get_attribute("class"))
        self.shot("requests", width=1400, height=700)  # docs/console-requests.png
        self.assertEqual(self.unlabelled_controls(), [])
        # 360 px wide: the page itself does not scroll sideways (the table does, inside its box)
        self.driver.set_window_size(360, 1000)
        self.wait(lambda d: d.execute_script("return window.innerWidth;") <= 360)
        self.assertLessEqual(self.page_width(), self.driver.execute_script("return window.innerWidth;"))
        self.shot("requests-360px", width=360)

        client = self.driver.find_element(By.ID, "f-client")
        client.send_keys("agent-b")
        client.submit()
        self.wait(lambda d: sorted(self.table_ids()) == ["bad-one", "from-b"])
        Select(self.driver.find_element(By.ID, "f-status")).select_by_value("4")
        self.wait(lambda d: self.table_ids() == ["bad-one"])
        self.shot("requests-filtered")
        self.driver.find_element(By.XPATH, "//button[text()='Clear']").click()
        self.wait(lambda d: len(self.table_ids()) == 4)
        self.driver.find_element(By.ID, "f-partial").click()
        self.wait(lambda d: self.table_ids() == ["cut-one"])
        self.driver.find_element(By.ID, "f-partial").click()
        search = self.driver.find_element(By.ID, "f-search")
        search.send_keys("from-")
        search.submit()
        self.wait(lambda d: sorted(self.table_ids()) == ["from-a", "from-b"])
        self.driver.find_element(By.XPATH, "//button[text()='Clear']").click()
        self.wait(lambda d: len(self.table_ids()) == 4)
        # The session filter takes the hashed key a record carries.
        session = self.admin_get("requests/from-a")["extra"]["session"]
        box = self.driver.find_element(By.ID, "f-session")
        box.send_keys("0" * len(session))
        box.submit()
        self.wait(lambda d: self.table_ids() == [])
        box = self.driver.find_element(By.ID, "f-session")
        box.clear()
        box.send_keys(session)
        box.submit()
        self.wait(lambda d: "from-a" in self.table_ids())
        self.assertEqual(sorted(self.table_ids()),
                         sorted(r["id"] for r in self.admin_get("requests?session=" + session)["items"]))


class DetailTest(ConsoleCase):
    def test_a_retried_request_shows_its_attempts_and_a_cut_stream_its_reason(self):
        self.mock.enqueue([scene(status=503, body=json.dumps({"error": {"message": "overloaded", "type": "server_error"}})),
                           scene()])
        self.assertEqual(self.chat("retried").status, 200, self.diag())
        self.mock.enqueue({"headers": {"Content-Type": "text/event-stream"}, "close_after": True,
                           "chunks": [{"data": CHAT_CHUNK}]})
        self.chat("cut-stream", stream=True)

        self.sign_in("#/request/retried")
        attempts = self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline li[data-attempt]") or False)
        self.assertEqual(len(attempts), 2)
        self.assertIn("status 503", attempts[0].text)
        self.assertIn("status 200", attempts[1].text)
        self.assertIn("oa", attempts[0].text)
        page = self.driver.find_element(By.TAG_NAME, "main").text
        self.assertIn("$0.0036", page)  # (400 plain * 2 + 800 cached * 0.5 + 300 out * 8) / 1e6
        curl = self.driver.find_element(By.ID, "curl").text
        self.assertIn("$SLUICE_KEY", curl)
        self.assertNotIn("sk-client-not-stored-555", curl)
        self.assertNotIn("sk-upstream-secret-oa", self.driver.page_source)
        self.shot("request-detail", width=1000, height=1000)  # docs/console-request.png

        self.driver.get(self.base + "#/request/cut-stream")
        outcome = self.wait(EC.visibility_of_element_located((By.ID, "outcome")))
        self.wait(lambda d: "UPSTREAM_EOF_EARLY" in d.find_element(By.ID, "outcome").text)
        self.assertIn("closed the connection before the answer was complete", outcome.text)
        self.assertIn("cut answer", outcome.text)
        self.shot("request-cut")


class UsageTest(ConsoleCase):
    def test_the_usage_totals_equal_the_sum_of_the_records(self):
        self.mock.enqueue([scene(repeat=3), scene(status=400, body=json.dumps(
            {"error": {"message": "no", "type": "invalid_request_error"}}))])
        for i, ua in enumerate(("agent-a/1", "agent-b/1", "agent-a/1", "agent-b/1")):
            self.chat("u-%d" % i, ua=ua)
        recs = self.records()
        self.assertEqual(len(recs), 4)
        self.sign_in("#/usage")
        self.wait(EC.visibility_of_element_located((By.ID, "usage-table")))
        total = {td.get_attribute("data-col"): td.text
                 for td in self.driver.find_elements(By.CSS_SELECTOR, "#usage-total td[data-col]")}
        self.assertEqual(total["requests"], str(len(recs)))
        self.assertEqual(total["errors"], str(sum(1 for r in recs if r["status"] >= 400)))
        self.assertEqual(total["input_tokens"], "{:,}".format(sum(r["usage"]["input_tokens"] or 0 for r in recs)))
        self.assertEqual(total["output_tokens"], "{:,}".format(sum(r["usage"]["output_tokens"] or 0 for r in recs)))
        self.assertEqual(total["cost"], "$%.4f" % sum(r["cost"] or 0 for r in recs))
        # the breakdown's rows add up to the total too
        Select(self.driver.find_element(By.ID, "u-by")).select_by_value("client")
        self.wait(lambda d: "By client" in d.find_element(By.TAG_NAME, "main").text)
        rows = self.driver.find_elements(By.CSS_SELECTOR, "#usage-table tbody tr")
        self.assertEqual(sorted(r.find_element(By.TAG_NAME, "th").text for r in rows), ["agent-a", "agent-b"])
        self.assertEqual(sum(int(r.find_element(By.CSS_SELECTOR, "td[data-col=requests]").text) for r in rows), 4)
        self.assertEqual(self.unlabelled_controls(), [])
        self.shot("usage")


class HealthTest(ConsoleCase):
    def pool_row(self, row_id=None):
        """The upstream pools table's first worker row (or row_id) as {column: text}."""
        heads = [th.text for th in self.driver.find_elements(By.CSS_SELECTOR, "#upstream-pools thead th")]
        row = (self.driver.find_element(By.ID, row_id) if row_id else
               self.driver.find_element(By.CSS_SELECTOR, "#upstream-pools tbody tr"))
        cells = [row.find_element(By.TAG_NAME, "th").text] + [
            td.text for td in row.find_elements(By.TAG_NAME, "td")]
        return dict(zip(heads, cells))

    def test_upstream_pools_follow_the_traffic(self):
        self.sign_in("#/health")
        self.wait(EC.visibility_of_element_located((By.ID, "upstream-pools")))
        self.assertEqual(self.driver.find_element(By.ID, "health-upstream-connections").text, "0 (0)")
        self.assertEqual(self.pool_row()["Connect attempts"], "0")  # nothing sent upstream yet
        # two answers through the gateway: one upstream connection, reused, now idle
        self.mock.enqueue(scene(repeat=2))
        for rid in ("pool-1", "pool-2"):
            self.assertEqual(self.chat(rid).status, 200, self.diag())
        self.driver.refresh()
        self.wait(EC.visibility_of_element_located((By.ID, "upstream-pools")))
        self.assertEqual(self.driver.find_element(By.ID, "health-upstream-connections").text, "1 (1)")
        self.assertEqual(self.driver.find_element(By.ID, "health-upstream-transfers").text, "0")
        row = self.pool_row()
        self.assertEqual(row, {"Worker": "worker 1", "Connections open": "1", "Idle": "1",
                               "Transfers in flight": "0", "Paused": "0",
                               "Pooled curl handles": "0",  # plain http://: the lean client
                               "Connect attempts": "1"})
        self.assertEqual(self.unlabelled_controls(), [])

    def test_a_broken_config_is_refused_on_reload_and_the_old_one_keeps_serving(self):
        # an answer first, so the upstream pool has something to show
        self.mock.enqueue(scene())
        self.assertEqual(self.chat("before-health").status, 200, self.diag())
        self.sign_in("#/health")
        self.wait(EC.visibility_of_element_located((By.ID, "config")))
        self.assertEqual(self.pool_row()["Connections open"], "1")
        self.assertIn("[redacted]", self.driver.find_element(By.ID, "config").text)
        self.assertNotIn("sk-upstream-secret-oa", self.driver.page_source)
        self.assertNotIn(ADMIN_TOKEN, self.driver.page_source)
        self.assertEqual(self.driver.find_element(By.ID, "health-workers").text, "1")
        self.assertIn("in-process", self.driver.find_element(By.ID, "sessions").text)
        self.assertEqual(self.unlabelled_controls(), [])
        self.shot("health")

        self.sluice.write_config(BROKEN_CONFIG)
        self.allowed.append("/_sluice/reload - Failed to load resource: the server responded with a status of 500")
        self.driver.find_element(By.ID, "reload").click()
        err = self.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, "#reload-result [role=alert]")))
        self.assertIn("refused", err.text)
        self.assertIn("workers", err.text)  # the field at fault
        self.shot("health-reload-refused")
        self.mock.enqueue(scene())
        self.assertEqual(self.chat("after-bad-reload").status, 200, "the old config keeps serving")

        self.sluice.write_config(self.config_text)
        self.driver.find_element(By.ID, "reload").click()
        ok = self.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, "#reload-result .msg.ok")))
        self.assertIn("Reloaded", ok.text)


if __name__ == "__main__":
    harness.main()
