"""The SDK through its Python bindings, against a real server.

Run by scripts/test after it generated the bindings:

    GRIDPATROL_BIN=target/debug/gridpatrol BINDINGS=target/bindings/python \
        python3 client-sdk/tests/python/test_sdk.py

An inspector's phone enrolls, records a patrol offline, syncs; the township leader's tablet
receives it and sends it back with a comment; the phone's next sync brings the verdict.
"""

import asyncio
import base64
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.environ["BINDINGS"])
from gridpatrol_sdk import (  # noqa: E402  (the path above first)
    Datum,
    DeviceClock,
    FixInput,
    GridPatrol,
    Method,
    NewProblemInput,
    OpenOptions,
    PatrolObserver,
    ProblemDisposition,
    SdkError,
    SyncState,
)

VILLAGE = "522632100001"  # in 古州镇
INSPECTOR = "inspector-522632100001-1"
LEADER = "leader-522632100"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A 16 × 12 JPEG made for this test.
TINY_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAgAAAQABAAD/wAARCAAMABADAREAAhEBAxEB/9sAQwAGBAUGBQQGBgUGBwcGCAoQCgoJCQoU"
    "Dg8MEBcUGBgXFBYWGh0lHxobIxwWFiAsICMmJykqKRkfLTAtKDAlKCko/9sAQwEHBwcKCAoTCgoTKBoWGigoKCgo"
    "KCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgoKCgo/8QAHwAAAQUBAQEBAQEAAAAAAAAA"
    "AAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAk"
    "M2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKT"
    "lJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QA"
    "HwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdh"
    "cRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hp"
    "anN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk"
    "5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDzXSfCn3f3f6V9JXzHzOLKs221Oz0nwp9393+leNXzHzP0nKs2"
    "21O30nTrbj5K8WvXn3P51yrE1NNTs9J0624+SvGr159z9JyrE1NNT//Z"
)

class Server:
    """`gridpatrol serve --demo` on a fresh data directory."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory()
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = dict(
            os.environ,
            GRIDPATROL_DATA_DIR=self.dir.name,
            GRIDPATROL_LISTEN=f"127.0.0.1:{port}",
            RUST_LOG="warn",
        )
        self.process = subprocess.Popen(
            [os.environ["GRIDPATROL_BIN"], "serve", "--demo"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    "the server did not start: " + self.process.stderr.read().decode()
                )
            time.sleep(0.2)

    def enrollment_code(self, user):
        out = subprocess.run(
            [os.environ["GRIDPATROL_BIN"], "enroll", "--user", user],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return re.search(r"enrollment code for \S+: (\S+)", out).group(1)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process.stderr.close()
        self.dir.cleanup()


class Heard(PatrolObserver):
    def __init__(self):
        self.ids = []

    def on_change(self, id):
        self.ids.append(id)


class SetClock(DeviceClock):
    """A phone clock the test sets: the SDK reads it from its own threads."""

    def __init__(self, now_ms):
        self.now = now_ms

    def now_ms(self):
        return self.now

    def monotonic_ms(self):
        return self.now


class PatrolThroughTheBindings(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_offline_patrol_sync_and_review(self):
        phone_dir = tempfile.TemporaryDirectory()
        self.addCleanup(phone_dir.cleanup)
        phone = GridPatrol.open(os.path.join(phone_dir.name, "phone.sqlite3"), self.server.url)
        with self.assertRaises(SdkError.NotEnrolled):
            phone.start_patrol(VILLAGE, Method.ROUTINE)
        phone.enroll(self.server.enrollment_code(INSPECTOR), "红米 Note 12")
        self.assertIn(VILLAGE, [g.code for g in phone.my_grids()])
        with self.assertRaises(SdkError.Invalid):
            phone.start_patrol("522632101001", Method.ROUTINE)  # another township's village

        # Offline: nothing below talks to the server.
        now = int(time.time() * 1000)
        patrol = phone.start_patrol(VILLAGE, Method.UNANNOUNCED)
        for i in range(20):
            phone.add_fix(
                patrol,
                FixInput(
                    at_ms=now + 10_000 * i,
                    lon=108.52 + 0.0002 * i,
                    lat=25.93 + 0.0001 * i,
                    datum=Datum.GCJ02,
                    accuracy_m=5.0,
                    mock=False,
                ),
            )
        phone.add_note(patrol, "巡查河道两岸，未发现异常")
        phone.record_problem(
            patrol,
            NewProblemInput(
                category="固体废物",
                description="河岸堆放建筑垃圾",
                lon=108.521,
                lat=25.931,
                datum=Datum.GCJ02,
                disposition=ProblemDisposition.ESCALATED,
            ),
        )
        camera = os.path.join(phone_dir.name, "IMG_0001.jpg")
        with open(camera, "wb") as f:
            f.write(TINY_JPEG)
        sha = phone.attach_photo(patrol, camera, "河岸垃圾")
        self.assertEqual(phone.pending_photo_bytes(), len(TINY_JPEG))
        phone.submit(patrol)
        listed = phone.patrol(patrol)
        self.assertEqual((listed.fix_count, listed.problem_count), (20, 1))
        self.assertTrue(listed.sync.is_local_only())

        report = phone.sync()
        self.assertEqual((report.round_trips, report.pushed, report.durable), (1, 2, 2))
        self.assertEqual(report.photos_uploaded, 1)
        self.assertEqual([(p.sha256, p.state) for p in phone.photos()], [(sha, "uploaded")])
        self.assertEqual(phone.pending_photo_bytes(), 0)
        self.assertTrue(phone.patrol(patrol).sync.is_durable())

        # The township leader's tablet receives the patrol and sends it back.
        tablet = GridPatrol.in_memory(self.server.url)
        tablet.enroll(self.server.enrollment_code(LEADER), "镇长的平板")
        tablet.sync()
        self.assertIn(patrol, [p.id for p in tablet.patrols()])
        tablet.review_patrol(patrol, False, "请补充问题照片")
        tablet.sync()

        heard = Heard()
        subscription = phone.observe(heard)
        report = phone.sync()
        self.assertEqual(report.received, 1)
        state = phone.patrol(patrol).sync
        self.assertTrue(state.is_returned(), state)
        self.assertEqual(state.comment, "请补充问题照片")
        self.assertIn(patrol, heard.ids)
        subscription.cancel()

        # The next patrol goes in the background once the platform reports a network.
        second = phone.start_patrol(VILLAGE, Method.ROUTINE)
        phone.add_note(second, "傍晚复查")
        phone.submit(second)
        self.assertTrue(phone.patrol(second).sync.is_local_only())
        phone.set_network_available(True)
        deadline = time.time() + 30
        while not phone.patrol(second).sync.is_durable():
            self.assertLess(time.time(), deadline, phone.last_background_error())
            time.sleep(0.05)
        self.assertIsNone(phone.last_background_error())

        # The same through asyncio: the SDK's runtime does the work, the event loop awaits it.
        # (Offline meanwhile, or the submit would already send it in the background.)
        phone.set_network_available(False)
        third = phone.start_patrol(VILLAGE, Method.ANNOUNCED)
        phone.submit(third)
        report = asyncio.run(phone.sync_async())
        self.assertEqual(report.durable, 1)
        self.assertTrue(phone.patrol(third).sync.is_durable())

    def test_a_clock_set_by_the_app(self):
        # A phone three hours slow: its stamps are the app's clock, and the sync measures it.
        hours_slow = 3 * 3_600_000
        clock = SetClock(int(time.time() * 1000) - hours_slow)
        phone = GridPatrol.in_memory_with_clock(self.server.url, clock)
        phone.enroll(self.server.enrollment_code("inspector-522632100002-1"), "荣耀 X50")
        started = clock.now
        patrol = phone.start_patrol("522632100002", Method.ROUTINE)
        clock.now += 25 * 60_000
        phone.submit(patrol)
        listed = phone.patrol(patrol)
        self.assertEqual((listed.started_at_ms, listed.ended_at_ms), (started, clock.now))
        self.assertIsNone(phone.clock_skew_ms())
        phone.sync()
        # The server's clock against the app's, which stood still during the round trip.
        skew = phone.clock_skew_ms() - (hours_slow - 25 * 60_000)
        self.assertLess(abs(skew), 60_000, phone.clock_skew_ms())

        with tempfile.TemporaryDirectory() as d:
            stored = GridPatrol.open_with_clock(
                os.path.join(d, "phone.sqlite3"), self.server.url, OpenOptions(), SetClock(42)
            )
            stored.enroll(self.server.enrollment_code("inspector-522632100003-1"), "vivo Y78")
            self.assertEqual(
                stored.patrol(stored.start_patrol("522632100003", Method.ROUTINE)).started_at_ms,
                42,
            )


class OpeningChecksItsArguments(unittest.TestCase):
    """No server needed: a bad address or bad trusted roots are refused when opening."""

    def test_bad_trusted_roots_and_addresses_are_refused(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "phone.sqlite3")
            with self.assertRaises(SdkError.Invalid):
                GridPatrol.open_with(
                    path,
                    "https://gridpatrol.example.cn",
                    OpenOptions(trusted_roots_pem="not a certificate"),
                )
            with self.assertRaises(SdkError.Invalid):
                GridPatrol.open(path, "gridpatrol.example.cn")
            with self.assertRaises(SdkError.Invalid):
                GridPatrol.in_memory("ftp://gridpatrol.example.cn")


if __name__ == "__main__":
    unittest.main(verbosity=2)
