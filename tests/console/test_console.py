"""The supervisor console in a real browser (Debian's Chromium driven by Playwright), against a
real server with patrols that `patrol-sim` synced through the real SDK.

Run by scripts/test after it built the server, patrol-sim and the SDK's Python bindings:

    GRIDPATROL_BIN=target/debug/gridpatrol PATROL_SIM_BIN=target/debug/patrol-sim \
        BINDINGS=target/bindings/python CHROMIUM=/usr/bin/chromium \
        python3 tests/console/test_console.py

Screenshots of the main pages go to docs/screenshots/ (SCREENSHOTS=0 to skip).
"""

import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "client-sdk", "tests", "python"))
from test_sdk import Server  # noqa: E402  (the SDK test's server harness and bindings)
from gridpatrol_sdk import Datum, FixInput, GridPatrol, Method  # noqa: E402

import openpyxl  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

PASSWORD = "gridpatrol-demo"
OTHER_VILLAGE = "522632100001"  # 古州镇's
SHOTS = os.path.join(ROOT, "docs", "screenshots")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def api(server, path, token=None, body=None):
    request = urllib.request.Request(
        server.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"}
        | ({"authorization": f"Bearer {token}"} if token else {}),
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def last_week():
    """The ISO week patrol-sim simulates (the seven days before today, China time)."""
    china = time.gmtime(time.time() + 8 * 3600 - 7 * 86400)
    year, week, _ = datetime.date(china.tm_year, china.tm_mon, china.tm_mday).isocalendar()
    return f"{year}-W{week:02d}"


class ConsoleInABrowser(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        cls.stores = tempfile.TemporaryDirectory()
        # Three inspectors of 车民街道, a week of patrols each, photos included, every phone online.
        subprocess.run(
            [
                os.environ["PATROL_SIM_BIN"],
                "--server", cls.server.url,
                "--inspectors", "3",
                "--days", "7",
                "--offline", "0",
                "--store-dir", cls.stores.name,
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        # patrol-sim walks the first village grids in code order (车民街道's): the first of them
        # is this test's village, its township the leader's.
        phones = sorted(f for f in os.listdir(cls.stores.name) if f.endswith(".sqlite3"))
        cls.villages = [re.match(r"inspector-(\d{12})-1\.sqlite3", f).group(1) for f in phones]
        cls.village = cls.villages[0]
        cls.township = cls.village[:9]
        cls.leader = f"leader-{cls.township}"
        cls.token = api(
            cls.server, "/v1/auth/login", body={"username": cls.leader, "password": PASSWORD}
        )["access_token"]
        cls.week = last_week()
        # The compliance worker judges in the background: wait until the week's record is still.
        deadline = time.time() + 120
        previous = None
        while time.time() < deadline:
            record = api(
                cls.server, f"/v1/compliance/weeks/{cls.week}?grid={cls.township}", cls.token
            )
            if record["summary"]["patrols"] > 0 and record["summary"] == previous:
                break
            previous = record["summary"]
            time.sleep(2)
        cls.playwright = sync_playwright().start()
        cls.browser = cls.playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS
        )

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.playwright.stop()
        cls.server.stop()
        cls.stores.cleanup()

    def setUp(self):
        self.context = self.browser.new_context(
            viewport={"width": 1366, "height": 768}, locale="zh-CN", accept_downloads=True
        )
        self.page = self.context.new_page()

    def tearDown(self):
        self.context.close()

    def shot(self, name):
        if os.environ.get("SCREENSHOTS", "1") != "0":
            os.makedirs(SHOTS, exist_ok=True)
            self.page.screenshot(path=os.path.join(SHOTS, name), full_page=False)

    def sign_in(self, password=PASSWORD):
        page = self.page
        username = self.leader
        page.goto(self.server.url + "/console/")
        expect(page).to_have_url(re.compile(r"/console/login\?next="))
        page.get_by_label("用户名").fill(username)
        page.get_by_label("密码").fill(password)
        page.get_by_role("button", name="登录").click()

    def test_a_wrong_password_says_so(self):
        self.sign_in(password="wrong-password")
        expect(self.page.locator("#login-error")).to_have_text("用户名或密码错误")
        self.shot("login.png")

    def test_a_form_without_its_csrf_token_is_refused(self):
        self.sign_in()
        expect(self.page.locator("h1")).to_contain_text("巡查周报")
        response = self.page.request.post(
            self.server.url + "/console/logout", form={"csrf": "forged"}, max_redirects=0
        )
        self.assertEqual(response.status, 403)
        self.assertIn("表单已失效", response.text())
        # Still signed in: the forged post changed nothing.
        self.page.goto(self.server.url + "/console/")
        expect(self.page.locator("h1")).to_contain_text("巡查周报")

    def test_keyboard_only_sign_in_and_no_overflow_on_a_tablet(self):
        page = self.page
        page.goto(self.server.url + "/console/")
        # The user name field has the focus; Tab to the password, Enter submits.
        # Chromium applies `autofocus` on a rendering update that may come after
        # the load event on a busy machine, so wait for the focus before typing.
        expect(page.locator("#username")).to_be_focused()
        page.keyboard.type(self.leader)
        page.keyboard.press("Tab")
        expect(page.locator("#password")).to_be_focused()
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        expect(page.locator("h1")).to_contain_text("巡查周报")
        # The first Tab reaches the skip link, which moves to the page's content.
        page.keyboard.press("Tab")
        expect(page.locator("a.skip")).to_be_focused()
        for width, height in [(1366, 768), (768, 1024)]:
            page.set_viewport_size({"width": width, "height": height})
            for path in [
                f"/console/weeks/{self.week}?grid={self.township}",
                f"/console/grids/{self.village}?week={self.week}",
            ]:
                page.goto(self.server.url + path)
                overflow = page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                self.assertLessEqual(overflow, 0, f"{path} overflows at {width} px")
        page.set_viewport_size({"width": 768, "height": 1024})
        page.goto(self.server.url + f"/console/weeks/{self.week}?grid={self.township}")
        self.shot("overview-tablet.png")

    def test_another_townships_grid_is_a_403_page(self):
        self.sign_in()
        response = self.page.goto(self.server.url + f"/console/grids/{OTHER_VILLAGE}")
        self.assertEqual(response.status, 403)
        expect(self.page.locator("h1")).to_contain_text("无权访问")

    def test_review_sign_off_and_export(self):
        page = self.page
        server = self.server
        self.sign_in()
        # The week's overview, with the counts of the record.
        page.goto(server.url + f"/console/weeks/{self.week}?grid={self.township}")
        record = api(server, f"/v1/compliance/weeks/{self.week}?grid={self.township}", self.token)
        summary = record["summary"]
        expect(page.locator("#patrols-counted")).to_have_text(str(summary["counted"]))
        expect(page.locator("#villages-met")).to_have_text(str(summary["villages_met"]))
        expect(page.locator("#villages-short")).to_have_text(str(summary["villages_short"]))
        village = next(
            v for t in record["townships"] for v in t["villages"] if v["grid"]["code"] == self.village
        )
        row = page.locator(f'tr[data-grid="{self.village}"]')
        for person in village["inspectors"]:
            expect(row).to_contain_text(f'{person["name"]} {person["counted"]}/{person["required"]}')
        expect(page.locator(".map svg a")).to_have_count(
            sum(len(t["villages"]) for t in record["townships"])
        )
        self.shot("overview.png")

        # A village: its patrols; then one patrol with its track.
        row.get_by_role("link").first.click()
        expect(page.locator("h1")).to_contain_text(village["grid"]["name"])
        self.shot("grid.png")
        links = page.locator("table a[href^='/console/patrols/']")
        self.assertGreaterEqual(links.count(), 2)
        links.nth(0).click()
        expect(page.locator("#track-map svg .fix-in").first).to_be_attached()
        returned = page.url.rsplit("/", 1)[1]
        self.assertGreater(page.locator("#track-map svg circle").count(), 10)
        expect(page.locator("#verdict")).to_be_visible()
        self.shot("patrol.png")

        # 退回 with a comment; the empty comment is refused first.
        page.get_by_role("button", name="退回").click()
        expect(page.locator("h1")).to_contain_text("请求有误")
        page.go_back()
        page.get_by_label("审核意见").fill("请补拍排污口照片")
        page.get_by_role("button", name="退回").click()
        expect(page.locator("#review-state")).to_have_text("已退回")

        # The inspector's phone (patrol-sim's store for it) hears of it on its next sync.
        phone = GridPatrol.open(os.path.join(self.stores.name, f"inspector-{self.village}-1.sqlite3"), server.url)
        phone.sync()
        state = phone.patrol(returned).sync
        self.assertTrue(state.is_returned(), state)
        self.assertEqual(state.comment, "请补拍排污口照片")

        # 通过 another.
        page.goto(server.url + f"/console/grids/{self.village}?week={self.week}")
        page.locator("table a[href^='/console/patrols/']").nth(1).click()
        page.get_by_role("button", name="通过").click()
        expect(page.locator("#review-state")).to_have_text("已通过")

        # Sign the week off: confirmation, then the frozen record with its hash.
        page.goto(server.url + f"/console/weeks/{self.week}?grid={self.township}")
        page.locator("#signoff-link").click()
        expect(page.locator("h1")).to_contain_text("签收周报")
        self.shot("signoff.png")
        page.get_by_role("button", name="确认签收").click()
        expect(page.locator("#content-hash")).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
        content_hash = page.locator("#content-hash").inner_text()
        # Signed at a local time, to the minute (China time), not the stored UTC timestamp.
        expect(page.locator("#signed")).to_contain_text(
            re.compile(r"已签收：.+，\d{4}-\d{2}-\d{2} \d{2}:\d{2}（?")
        )
        self.assertNotRegex(page.locator("#signed").inner_text(), r"\dT\d")
        self.shot("signed.png")

        # The XLSX: the frozen record, cell by cell.
        with page.expect_download() as download:
            page.locator("#export-xlsx").click()
        path = os.path.join(tempfile.mkdtemp(), download.value.suggested_filename)
        download.value.save_as(path)
        self.assertTrue(path.endswith(".xlsx"), path)
        sheet = openpyxl.load_workbook(path)["汇总"]
        self.assertIn(content_hash, sheet["A2"].value)
        self.assertEqual(sheet["A4"].value, self.township)
        self.assertEqual(sheet["C4"].value, summary["villages"])
        self.assertEqual(sheet["D4"].value, summary["villages_met"])
        self.assertEqual(sheet["H4"].value, summary["counted"])
        self.assertEqual(sheet["B5"].value, "合计")

    def test_a_patrol_that_syncs_appears_without_reloading(self):
        page = self.page
        self.sign_in()
        expect(page.locator("#live .empty")).to_be_visible()
        # An inspector's phone records a patrol now and syncs it.
        phone = GridPatrol.open(
            os.path.join(self.stores.name, f"inspector-{self.villages[1]}-1.sqlite3"),
            self.server.url,
        )
        village = self.villages[1]
        patrol = phone.start_patrol(village, Method.ROUTINE)
        now = int(time.time() * 1000)
        for i in range(12):
            phone.add_fix(
                patrol,
                FixInput(
                    at_ms=now + 10_000 * i,
                    lon=108.52 + 0.0001 * i,
                    lat=25.93,
                    datum=Datum.WGS84,
                    accuracy_m=5.0,
                    mock=False,
                ),
            )
        phone.submit(patrol)
        phone.sync()
        live = page.locator(f"#live a[href='/console/patrols/{patrol}']")
        expect(live).to_be_visible(timeout=15_000)


if __name__ == "__main__":
    unittest.main(verbosity=2)
