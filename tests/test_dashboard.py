"""The scheduler's dashboard: /api/v1, /metrics, bad requests, the port, the secret, the pages
in a real browser (Debian's chromium, headless; skipped when it is not installed)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

import cloudpickle
import pytest
from conftest import validated, wait_until

import runtime as rt
from runtime import Client, LocalCluster, config
from runtime.scheduler import stimuli as st
from runtime.scheduler.state import SchedulerState

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _get(url: str, headers: dict | None = None) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


@pytest.fixture(scope="module")
def dash():
    with config.set({"scheduler.dashboard.address": "127.0.0.1:0"}), LocalCluster(2) as cluster:
        with Client(cluster) as client, validated(client.core):
            link = client.dashboard_link
            assert link and link.startswith("http://127.0.0.1:") and link.endswith("/status")
            yield client, link.removesuffix("/status")


def _slow(x: int) -> int:
    time.sleep(0.02)
    return x


def test_the_api_serves_workers_nodes_tasks_and_one_task(dash):
    client, base = dash
    futures = client.map(_slow, range(20), key="slowdash")
    client.gather(futures)
    _, kind, body = _get(base + "/api/v1/workers")
    workers = json.loads(body)
    assert kind.startswith("application/json") and len(workers) == 2
    assert {"address", "node", "nthreads", "memory", "processing", "status"} <= workers[0].keys()
    assert {"own", "rss", "managed", "limit"} == workers[0]["memory"].keys()
    nodes = json.loads(_get(base + "/api/v1/nodes")[2])
    assert len(nodes) == 1 and {"used", "spilled", "limit", "pooled"} == nodes[0]["store"].keys()

    def counted() -> dict | None:  # the snapshot is at most a quarter of a second old
        tasks = json.loads(_get(base + "/api/v1/tasks")[2])
        prefixes = {p["name"]: p for p in tasks["prefixes"]}
        return tasks if prefixes.get("slowdash", {}).get("states", {}).get("memory") == 20 else None

    tasks = wait_until(counted, "the API counts the 20 tasks in memory")
    assert sum(tasks["states"].values()) == tasks["total"]
    slow = next(p for p in tasks["prefixes"] if p["name"] == "slowdash")
    assert slow["compute_seconds"] >= 20 * 0.02 and slow["totals"]["processing"] >= 20
    status, _, body = _get(base + f"/api/v1/task/{futures[3].key}")
    one = json.loads(body)
    assert status == 200 and one["state"] == "memory" and one["prefix"] == "slowdash"
    assert [e["finish"] for e in one["story"]][-1] == "memory"
    stream = json.loads(_get(base + "/api/v1/stream?since=0")[2])
    assert {e[1] for e in stream} >= {f.key for f in futures}
    assert all(e[5] >= e[4] for e in stream)  # stop after start
    del futures


def test_metrics_are_prometheus_text_named_as_dask_s(dash):
    client, base = dash
    client.gather(client.map(_slow, range(5), key="metricdash"))
    lock = rt.Lock("metricdash-lock")
    lock.acquire()
    try:
        # The snapshot is at most a quarter of a second old.
        wait_until(lambda: 'held",kind="semaphore"} 1.0' in _get(base + "/metrics")[2].decode(), "the lock shows")
        status, kind, body = _get(base + "/metrics")
    finally:
        lock.release()
    text = body.decode()
    assert 'runtime_scheduler_primitives{figure="held",kind="semaphore"} 1.0' in text, text[-800:]
    assert status == 200 and kind.startswith("text/plain")
    for name in (
        "runtime_scheduler_clients", 'runtime_scheduler_workers{state="running"} 2.0',
        'runtime_scheduler_tasks{state="memory"}', "runtime_scheduler_tasks_forgotten_total",
        "runtime_scheduler_tasks_suspicious_total", 'runtime_scheduler_tasks_compute_seconds_total{task_prefix_name="',
        "runtime_scheduler_tasks_output_bytes", 'runtime_scheduler_prefix_state_totals_total{state="memory"',
        'runtime_objstore_bytes{kind="limit"', "runtime_objstore_transfers_total",
        'runtime_worker_memory_bytes{kind="limit"', 'runtime_scheduler_steals_total{outcome="moved"}',
        'runtime_scheduler_tasks_transfer_seconds_total{task_prefix_name="', 'runtime_objstore_bytes{kind="pooled"',
        'runtime_objstore_bytes{kind="pooled"',
    ):  # fmt: skip
        assert name.split("{")[0] in text, name
    # Tasks per state add up to the tasks the scheduler holds.
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    held = sum(s.value for s in families["runtime_scheduler_tasks"].samples)
    assert held == json.loads(_get(base + "/api/v1/tasks")[2])["total"]


def test_bad_requests_get_404_or_400_and_the_scheduler_carries_on(dash):
    client, base = dash
    for path, code in [
        ("/nothing-here", 404), ("/api/v1/task/no-such-key-123", 404), ("/api/v1/nope", 404),
        ("/static/../server.py", 404), ("/static/missing.js", 404),
        ("/api/v1/stream?since=abc", 400), ("/api/v1/stream?since=-4", 400), ("/events?since=x", 400),
    ]:  # fmt: skip
        status, kind, body = _get(base + path)
        assert status == code, (path, status, body)
        if path.startswith("/api/"):
            assert "error" in json.loads(body), path
    assert "no-such-key-123" in json.loads(_get(base + "/api/v1/task/no-such-key-123")[2])["error"]
    assert client.submit(_slow, 1).result() == 1  # the scheduler still serves


def test_pages_and_scripts_are_served_with_nothing_from_outside(dash):
    _, base = dash
    for path in ("/status", "/workers", "/task/anything", "/static/dashboard.js", "/static/dashboard.css"):
        status, _, body = _get(base + path)
        assert status == 200, path
        assert b"http://" not in body and b"https://" not in body, f"{path} fetches something from outside"
    status, _, _ = _get(base + "/")
    assert status == 200  # redirected to /status


def test_a_taken_port_moves_the_dashboard_and_the_cluster_starts(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with config.set({"scheduler.dashboard.address": f"127.0.0.1:{port}"}), LocalCluster(1) as cluster:
            with Client(cluster) as client:
                link = client.dashboard_link
                assert link and f":{port}/" not in link
                assert client.submit(_slow, 2).result() == 2
                with open(os.path.join(cluster.session_dir, "logs", "scheduler.log")) as f:
                    assert f"port {port} for the dashboard is taken" in f.read()


def test_off_means_no_dashboard():
    with config.set({"scheduler.dashboard.address": "off"}), LocalCluster(1) as cluster:
        with Client(cluster) as client:
            assert client.dashboard_link is None
            assert client.submit(_slow, 3).result() == 3


def test_beyond_the_loopback_needs_a_secret(monkeypatch):
    monkeypatch.delenv("RUNTIME_SECRET", raising=False)
    monkeypatch.delenv("RUNTIME_SECRET_FILE", raising=False)
    with config.set({"scheduler.dashboard.address": "0.0.0.0:0"}), LocalCluster(1) as cluster:
        with Client(cluster) as client:
            assert client.dashboard_link is None  # refused: no secret
            with open(os.path.join(cluster.session_dir, "logs", "scheduler.log")) as f:
                assert "needs a shared secret" in f.read()


def test_with_a_secret_the_pages_ask_for_it_and_scripts_send_it():
    import asyncio

    aiohttp_web = pytest.importorskip("aiohttp.web")
    from runtime.dashboard import http
    from runtime.dashboard.service import Dashboard
    from runtime.scheduler.server import Scheduler

    async def main() -> None:
        sched = Scheduler(dashboard_address="127.0.0.1:0")
        await sched.start("tcp://127.0.0.1:0")
        dashboard: Dashboard = sched.dashboard  # type: ignore[assignment]
        await dashboard.started
        dashboard.secret = b"s3cret"
        base = dashboard.link.removesuffix("/status")
        loop = asyncio.get_running_loop()
        status, _, _ = await loop.run_in_executor(None, _get, base + "/api/v1/workers")
        assert status == 401
        status, _, body = await loop.run_in_executor(None, _get, base + "/status")
        assert status == 200 and b"shared secret" in body  # redirected to /login
        status, _, _ = await loop.run_in_executor(None, _get, base + "/metrics", {"Authorization": "Bearer s3cret"})
        assert status == 200
        status, _, _ = await loop.run_in_executor(None, _get, base + "/metrics", {"Authorization": "Bearer nope"})
        assert status == 401
        cookie = f"{http.COOKIE}={http._token(b's3cret')}"
        status, _, _ = await loop.run_in_executor(None, _get, base + "/api/v1/nodes", {"Cookie": cookie})
        assert status == 200
        await sched.close()

    assert aiohttp_web
    asyncio.run(main())


def test_group_counts_follow_every_transition_without_walking_tasks():
    s = SchedulerState(validate=True)  # validate_state checks the counts after every stimulus
    s.handle(st.AddNode("n", "n1"))
    s.handle(st.AddWorker("w", "w1", "n1", 1))
    s.handle(
        st.UpdateGraph(
            "g", "c1", (st.TaskSpec("a-1", (b"f", b"a")), st.TaskSpec("b-1", (b"f", b"a"), ("a-1",))), ("b-1",)
        )
    )
    tg = s.task_groups["a"]
    assert tg.states()["processing"] == 1 and s.task_groups["b"].states()["waiting"] == 1
    s.handle(st.TaskFinished("f", "a-1", "w1", b"x", 7, 1.0, 1.5))
    assert tg.compute_seconds == 0.5 and s.task_groups["b"].states()["processing"] == 1
    s.handle(st.TaskFinished("f2", "b-1", "w1", b"y", 9, 2.0, 2.25))
    assert tg.states()["released"] == 1 and tg.nbytes == 0 and s.task_groups["b"].nbytes == 9
    s.handle(st.ClientReleasesKeys("r", "c1", ("b-1",)))
    assert s.task_groups["b"].nbytes == 0 and not s.tasks and tg.entered["forgotten"] == 1


def test_the_task_stream_keeps_the_newest_and_serves_from_a_number():
    from runtime.dashboard.snapshot import Recorder

    r = Recorder(SchedulerState())
    for i in range(5):
        r(st.TaskFinished(f"s{i}", f"inc-{i}", "w1", b"", 1, float(i), i + 0.5))
    r(st.TaskFinished("s-no-times", "inc-9", "w1", b"", 1))  # no start/stop: not drawn
    assert [e[1] for e in r.since(0, 100)] == [f"inc-{i}" for i in range(5)]
    assert [e[1] for e in r.since(3, 100)] == ["inc-3", "inc-4"]
    assert [e[1] for e in r.since(0, 2)] == ["inc-3", "inc-4"] and r.since(5, 10) == []


def test_a_stored_value_and_its_copies_read_from_their_store_refs():
    from runtime.comm.messages import StoreRef
    from runtime.dashboard.snapshot import Recorder, task

    s = SchedulerState(validate=True)
    r = Recorder(s)
    for stimulus in (
        st.AddNode("n", "n1"),
        st.AddNode("n2", "n2"),
        st.AddWorker("w", "w1", "n1", 1),
        st.UpdateGraph("g", "c1", (st.TaskSpec("a-1", (b"f", b"a")),), ("a-1",)),
    ):
        s.handle(stimulus)
    ref = StoreRef("n1", 1000, "rt-1-abcdef-" + "0" * 28)
    s.handle(st.TaskFinished("f", "a-1", "w1", ref, 1000, 1.0, 1.5))
    assert task(s, "a-1")["stored"] == ["n1", 1000, ref.name]  # JSON as before: [node, nbytes, name]
    r(st.AddReplica("c", "a-1", "n2", "rt-1-abcdef-" + "1" * 28, ref))
    assert r.transfers == {"n2": [1, 1000]}
    s.handle(st.UpdateData("u", "c1", "inline-1", b"v", 1))  # inline: held by the scheduler
    assert task(s, "inline-1")["stored"] is None


def test_the_dashboard_address_setting():
    assert config.dashboard_address(":8787") == "127.0.0.1:8787"
    assert config.dashboard_address("off") is None and config.dashboard_address(None) is None
    assert config.dashboard_address("0.0.0.0:0") == "0.0.0.0:0"
    with pytest.raises(config.ConfigError, match="scheduler.dashboard.address"):
        config.set({"scheduler.dashboard.address": "not-a-port"})


def test_init_logs_the_link_once_and_status_prints_it(caplog):
    caplog.set_level("INFO", logger="runtime")
    with config.set({"scheduler.dashboard.address": "127.0.0.1:0"}):
        runtime = rt.init(num_workers=1)
    try:
        rt.init(ignore_reinit_error=True)

        def lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if "dashboard at" in r.getMessage()]

        wait_until(lines, "the dashboard link in the log")  # logged once the dashboard serves, after init()
        assert len(lines()) == 1 and runtime.client.dashboard_link in lines()[0]
        from runtime.cli import format_status

        status = runtime.client.request("status")
        assert f"dashboard: {runtime.client.dashboard_link}" in format_status("x", status)
    finally:
        rt.shutdown()


# -- in a real browser --------------------------------------------------------------------


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium and chromedriver are not on the PATH (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options)


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _busy(x: int) -> int:
    time.sleep(0.05)
    return x


def test_the_pages_in_headless_chromium(dash, tmp_path):
    client, base = dash
    driver = _browser()
    try:
        stop = threading.Event()
        keys: list = []

        def compute() -> None:  # keeps the cluster busy while the page watches
            i = 0
            while not stop.is_set():
                futures = client.map(_busy, range(i, i + 8), key="browsertask")
                client.gather(futures)
                keys.append(futures[0])  # held: its task stays known for the task page
                i += 8

        thread = threading.Thread(target=compute, daemon=True)
        thread.start()
        try:
            driver.get(base + "/status")
            wait_until(
                lambda: "browsertask" in driver.find_element("id", "progress").text, "the page shows the prefix", 30
            )
            memory_text = driver.find_element("id", "memory").text
            assert all(a in memory_text for a in client.core.request("identity")["workers"]), memory_text
            first = driver.find_element("id", "progress").text
            wait_until(lambda: driver.find_element("id", "progress").text != first, "the figures change", 30)
            wait_until(lambda: driver.find_element("id", "legend").text, "the task stream draws tasks", 30)
            driver.save_screenshot(str(tmp_path / "status.png"))
            assert _console_errors(driver) == []
            driver.get(base + "/workers")
            wait_until(lambda: len(driver.find_elements("css selector", "#workers tbody tr")) == 2, "two worker rows")
            driver.save_screenshot(str(tmp_path / "workers.png"))
            assert _console_errors(driver) == []
        finally:
            stop.set()
            thread.join(60)
        driver.get(base + f"/task/{keys[-1].key}")
        wait_until(lambda: "processing → memory" in driver.find_element("id", "story").text, "the task's story", 30)
        driver.save_screenshot(str(tmp_path / "task.png"))
        assert _console_errors(driver) == []
        print(f"screenshots in {tmp_path}")
    finally:
        driver.quit()
