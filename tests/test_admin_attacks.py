"""The admin API under attack: the real daemon, raw sockets over loopback, hostile clients.

Floods, slow clients, over-size and malformed requests, path tricks and secret
guessing; after each the daemon still answers its probes, still refreshes, and
never logged a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import DaemonProcess, EmulatorProcess, TestApp, wait_for

pytestmark = pytest.mark.e2e

APPS = [
    TestApp(appid=f"wx{n:016x}", secret=f"{n:032x}", name=f"app{n}", grant=grant)
    for n, grant in ((1, "classic"), (2, "stable"))
]
SDK = {"grant_type": "client_credential", "appid": APPS[0].appid, "secret": APPS[0].secret}


def start(
    emulator: EmulatorFactory, daemon: DaemonFactory, **admin: Any
) -> tuple[EmulatorProcess, DaemonProcess]:
    emu = emulator(APPS, lifetime=6, grace=2, stable_window=2)
    d = daemon(APPS, emu.base_url, stable_renew_window=2, admin={"listen": "127.0.0.1:0", **admin})
    d.start().wait_for_tokens([a.name for a in APPS])
    return emu, d


def listeners(d: DaemonProcess) -> list[str]:
    d.admin_url()
    started = next(e for e in d.events() if e.get("event") == "started")
    return [str(url) for url in started["admin"]]


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raise_own_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"this test needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))


async def exchange(url: str, raw: bytes, *, within: float = 10) -> tuple[int, bytes]:
    """Send ``raw`` on a fresh connection; (status, body) of the answer, read to the close."""
    host, port = host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw)
    await writer.drain()
    try:
        response = await asyncio.wait_for(reader.read(), timeout=within)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def request(method: str, target: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: wxtokend", "Connection: close"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def probe(url: str, path: str = "/healthz") -> int:
    with httpx.Client(base_url=url, timeout=10) as client:
        return client.get(path).status_code


def assert_no_traceback(d: DaemonProcess) -> None:
    log = d.log_text()
    assert "Traceback" not in log
    assert "Exception in" not in log
    assert d.process is not None
    assert d.process.poll() is None


class Usage:
    """The daemon's RSS, CPU seconds and open files, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


class TestConnectionFlood:
    """5,000 concurrent connections: every one is answered, probes answer, refreshing goes on."""

    CONNECTIONS = 5000

    def test_5000_connections(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """All 5,000 held open at once get 200; /healthz answers on the same listener meanwhile."""
        raise_own_file_limit(self.CONNECTIONS + 1000)
        emu, d = start(emulator, daemon)
        url = d.admin_url()
        usage = Usage(d.pid)
        files_before = usage.open_files()
        issued_before = sum(s.get("issued", 0) for s in emu.stats().values())
        result = asyncio.run(self.flood(url, usage))
        assert result["statuses"] == {200: self.CONNECTIONS}
        assert result["peak_files"] >= self.CONNECTIONS
        assert set(result["probe_statuses"]) == {200}
        print(  # the numbers for the README and the report (pytest -s shows them)
            f"\n{self.CONNECTIONS} connections: /healthz with all open and idle {result['idle']},"
            f" while all {self.CONNECTIONS} send a request {result['busy']};"
            f" RSS {result['rss_before']:.1f} -> {result['rss_peak']:.1f} MB;"
            f" CPU {result['cpu']:.2f} s in {result['wall']:.2f} s wall"
        )
        # The connections are gone again and the refresh loops never stopped.
        wait_for(lambda: usage.open_files() <= files_before + 10, timeout=30, what="sockets closed")
        wait_for(
            lambda: sum(s.get("issued", 0) for s in emu.stats().values()) > issued_before + 2,
            timeout=30,
            what="refreshes after the flood",
        )
        for app in APPS:
            token = d.token(app.name)
            assert token is not None
            assert emu.check(token) == 0
        # Ready again: with 6 s lifetimes on a loaded machine a refresh may be just due.
        wait_for(lambda: probe(url, "/readyz") == 200, timeout=10, what="/readyz 200")
        assert_no_traceback(d)

    async def flood(self, url: str, usage: Usage) -> dict[str, Any]:
        host, port = host_port(url)
        rss_before, cpu_before, wall_before = usage.rss_mb(), usage.cpu_seconds(), time.monotonic()
        streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for batch in range(0, self.CONNECTIONS, 500):  # within the listen backlog
            size = min(500, self.CONNECTIONS - batch)
            streams += await asyncio.gather(
                *(asyncio.open_connection(host, port) for _ in range(size))
            )
        for _ in range(200):  # until the daemon accepted them all (10 s at most)
            if usage.open_files() >= self.CONNECTIONS:
                break
            await asyncio.sleep(0.05)
        peak_files = usage.open_files()
        idle = [await self.timed_probe(url) for _ in range(20)]  # 5,000 open, none asking
        busy: list[tuple[int, float]] = []
        flooding = threading.Event()
        flooding.set()
        # In a thread: this loop is busy with the flood's 5,000 answers, which would be timed too.
        prober = threading.Thread(target=keep_probing, args=(url, busy, flooding))
        prober.start()
        statuses = await asyncio.gather(*(self.ask(reader, writer) for reader, writer in streams))
        rss_peak = usage.rss_mb()
        cpu, wall = usage.cpu_seconds() - cpu_before, time.monotonic() - wall_before
        flooding.clear()
        await asyncio.to_thread(prober.join)
        busy.append(await self.timed_probe(url))  # and once more, with all of them still open
        for _, writer in streams:
            writer.close()
        return {
            "statuses": {s: statuses.count(s) for s in set(statuses)},
            "peak_files": peak_files,
            "probe_statuses": [s for s, _ in idle + busy],
            "idle": _percentiles([t for _, t in idle]),
            "busy": _percentiles([t for _, t in busy]),
            "rss_before": rss_before,
            "rss_peak": rss_peak,
            "cpu": cpu,
            "wall": wall,
        }

    async def ask(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        """GET /v1/apps on an open connection, keeping it open (keep-alive)."""
        writer.write(b"GET /v1/apps HTTP/1.1\r\nHost: wxtokend\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=60)
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length")
        )
        await asyncio.wait_for(reader.readexactly(length), timeout=60)
        return int(head.split(b" ", 2)[1])

    async def timed_probe(self, url: str) -> tuple[int, float]:
        started = time.perf_counter()
        status, _ = await exchange(url, request("GET", "/healthz"))
        return status, time.perf_counter() - started


def keep_probing(url: str, probes: list[tuple[int, float]], going: threading.Event) -> None:
    """GET /healthz on a new connection every 20 ms while ``going``: (status, seconds) each."""
    address = host_port(url)
    while going.is_set():
        started = time.perf_counter()
        with socket.create_connection(address, timeout=30) as sock:
            sock.sendall(request("GET", "/healthz"))
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        probes.append((int(response.split(b" ", 2)[1]), time.perf_counter() - started))
        time.sleep(0.02)


def _percentiles(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p50, top = ordered[len(ordered) // 2] * 1000, ordered[-1] * 1000
    return f"p50 {p50:.1f} ms / max {top:.1f} ms ({len(ordered)} probes)"


class TestOpenFileLimit:
    """A low soft open-file limit would cap connections far below the hard one."""

    def test_soft_limit_raised_to_hard(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """Started with a soft limit of 256, the daemon runs with soft = hard."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        try:  # the daemon inherits the low limit
            _, d = start(emulator, daemon)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        limits = Path(f"/proc/{d.pid}/limits").read_text().splitlines()
        line = next(x for x in limits if x.startswith("Max open files"))
        daemon_soft, daemon_hard = line.split()[3:5]
        assert daemon_soft == daemon_hard
        assert daemon_hard == ("unlimited" if hard == resource.RLIM_INFINITY else str(hard))


class TestSlowClients:
    """Slow clients holding half-sent requests block nobody and are cut off by the deadline."""

    HEADER_TRICKLERS = 1000
    BODY_STALLERS = 100

    def test_slowloris(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """With 1,100 half-sent requests open, probes answer on both listeners; then all are cut."""
        raise_own_file_limit(3000)
        emu, d = start(emulator, daemon, probe_listen="127.0.0.1:0")
        admin_url, probe_url = listeners(d)
        outcome = asyncio.run(self.hold(admin_url, probe_url))
        assert outcome["opened"] == self.HEADER_TRICKLERS + self.BODY_STALLERS + 10
        assert outcome["probes_while_held"] == [200] * 5
        # Every slow client was answered 408 (or just closed) by the daemon's deadlines.
        assert outcome["cut"] == outcome["opened"]
        assert outcome["statuses"] <= {408, None}
        assert_no_traceback(d)
        assert emu.check(d.token("app1") or "") == 0

    async def hold(self, admin_url: str, probe_url: str) -> dict[str, Any]:
        admin, probes = host_port(admin_url), host_port(probe_url)
        slow: list[Awaitable[int | None]] = []
        streams = []
        targets = [
            (admin, self.HEADER_TRICKLERS, b"GET /v1/apps HTTP/1.1\r\nHost: wxtokend\r\n"),
            (
                admin,
                self.BODY_STALLERS,
                b"POST /v1/apps/app1/refresh HTTP/1.1\r\nHost: w\r\nContent-Length: 100\r\n\r\n{",
            ),
            (probes, 10, b"GET /healthz HTTP/1.1\r\n"),
        ]
        for (host, port), count, prefix in targets:
            for _ in range(count):
                streams.append((*await asyncio.open_connection(host, port), prefix))
        slow = [self.trickle(reader, writer, prefix) for reader, writer, prefix in streams]
        running = asyncio.gather(*slow)
        await asyncio.sleep(2)  # all of them mid-request
        held = []
        for url in (admin_url, probe_url, admin_url, probe_url):
            status, _ = await exchange(url, request("GET", "/healthz"))
            held.append(status)
        status, _ = await exchange(admin_url, request("GET", "/readyz"))
        held.append(status)
        results = await asyncio.wait_for(running, timeout=40)
        return {
            "opened": len(streams),
            "probes_while_held": held,
            "cut": sum(1 for r in results if r != "open"),
            "statuses": {r for r in results if r != "open"},
        }

    async def trickle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: bytes
    ) -> int | str | None:
        """Send ``prefix``, then one header byte a second until the server gives up on us.

        The status the server answered with (None if it just closed), or "open" if after
        30 s it still had not.
        """
        writer.write(prefix)
        deadline = time.monotonic() + 30
        answer = asyncio.ensure_future(reader.read())
        try:
            while time.monotonic() < deadline:
                done, _ = await asyncio.wait({answer}, timeout=1)
                if done:
                    data = answer.result()
                    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None
                writer.write(b"X")  # one more byte of a header (or body) that never ends
            return "open"
        except (ConnectionResetError, BrokenPipeError):
            return None
        finally:
            answer.cancel()
            writer.close()


class TestHostileRequests:
    """Over-size, malformed and path-tricking requests: a clear 4xx, never a traceback."""

    def test_requests(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """Each is answered with the documented status and the daemon carries on."""
        emu, d = start(emulator, daemon, probe_listen="127.0.0.1:0")
        admin_url, probe_url = listeners(d)
        asyncio.run(self.attack(admin_url, probe_url))
        assert probe(admin_url) == 200
        assert_no_traceback(d)
        assert emu.check(d.token("app1") or "") == 0

    async def attack(self, admin_url: str, probe_url: str) -> None:
        huge = request("POST", "/v1/apps/app1/refresh", Content_Length="100000000")
        # 413 at once: waiting for the 100 MB would end in the body deadline's 408 instead.
        assert (await exchange(admin_url, huge, within=5))[0] == 413
        stable = request("POST", "/cgi-bin/stable_token", b'{"x": "' + b"a" * 5000 + b'"}')
        assert (await exchange(admin_url, stable))[0] == 413
        sent, answer = await self.chunked_flood(admin_url)
        assert sent < 1_000_000
        assert answer in {b"HTTP/1.1 413", b"reset"}
        for body, says in [
            (b"{nope", b"body is not JSON"),
            (b"\xff\xfe{}", b"body is not UTF-8"),
            (b"[" * 8000 + b"]" * 8000, b"nested too deeply"),
            (b'{"fingerprint": ' + b"7" * 6000 + b"}", b"body is not JSON"),
            (b'{"access_token": {"a": 1}}', b"send JSON"),
        ]:
            status, answer = await exchange(
                admin_url, request("POST", "/v1/apps/app1/refresh", body)
            )
            assert (status, says in answer) == (400, True)
        for target in [
            "/v1/apps/..%2F..%2Fsecrets%2Fapp1",
            "/v1/apps/../../etc/passwd",
            "/v1/apps/%00",
            "/v1/apps/app1%00.json",
            "/v1/apps/" + "n" * 8000,
            "/v1/apps/%E5%BA%97%E9%93%BA",
            "/v1/apps/%ff%fe/refresh",
        ]:
            status, answer = await exchange(admin_url, request("GET", target))
            body = json.loads(answer)
            assert (status, body["apps"]) == (404, ["app1", "app2"])
            assert body["error"].startswith("no app named")
        assert (await exchange(admin_url, b"GET /v1/apps/\xe5\xba\x97 HTTP/1.1\r\n\r\n"))[0] == 400
        for path in ["/v1/apps", "/cgi-bin/token", "/", "/v1/apps/app1/refresh"]:
            status, answer = await exchange(probe_url, request("GET", path))
            assert (status, b"serves only /healthz, /readyz, /metrics" in answer) == (404, True)
        for path in ["/healthz", "/readyz", "/metrics"]:
            assert (await exchange(probe_url, request("GET", path)))[0] == 200
        big = request("POST", "/healthz", Content_Length="100000000")
        assert (await exchange(probe_url, big, within=5))[0] == 413

    async def chunked_flood(self, url: str) -> tuple[int, bytes]:
        """Stream a 1 MB chunked body: (bytes sent before the daemon cut it off, its answer).

        The answer is the 413's status line, or b"reset": a server closing with unread
        bytes resets the connection, and the reset may overtake the 413 it wrote.
        """
        host, port = host_port(url)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /v1/apps/app1/refresh HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        answer = asyncio.ensure_future(reader.read())
        try:
            while sent < 1_000_000 and not answer.done():
                writer.write(b"400\r\n" + b"a" * 1024 + b"\r\n")
                await writer.drain()
                sent += 1024
                await asyncio.sleep(0.001)
            data = (await asyncio.wait_for(answer, timeout=10))[:12]
        except (ConnectionResetError, BrokenPipeError):
            data = b"reset"
        writer.close()
        return sent, data


class TestSecretGuessing:
    """Wrong SDK secrets are limited per peer; other peers and right secrets are unaffected."""

    def test_per_peer_limit(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """After 10 wrong guesses 127.0.0.1 gets 45011 + Retry-After; 127.0.0.2 gets its token."""
        _, d = start(emulator, daemon)
        url = d.admin_url()
        attacker = httpx.Client(base_url=url, timeout=10)
        other = httpx.Client(
            base_url=url,
            transport=httpx.HTTPTransport(local_address="127.0.0.2"),
            timeout=10,
        )
        guesses = [
            attacker.get("/cgi-bin/token", params={**SDK, "secret": f"{n:032x}"}).json()["errcode"]
            for n in range(3, 13)
        ]
        assert guesses == [40125] * 10
        blocked = attacker.post("/cgi-bin/stable_token", json=SDK)
        assert blocked.json()["errcode"] == 45011
        assert 1 <= int(blocked.headers["Retry-After"]) <= 60
        answer = other.get("/cgi-bin/token", params=SDK).json()
        assert answer["access_token"] == d.token("app1")
        attacker.close()
        other.close()
        assert_no_traceback(d)

    def test_unix_peers_share_one_limit(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        """Unix-socket peers have no address: their failures count together."""
        sock = Path("/tmp") / f"wxt-{os.getpid()}-{tmp_path.name[-8:]}.sock"  # short: sun_path
        _, d = start(emulator, daemon, listen=f"unix:{sock}")
        wait_for(sock.exists, timeout=20, what="the admin socket")
        clients = [
            httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://w")
            for _ in range(2)
        ]
        for _ in range(10):
            clients[0].get("/cgi-bin/token", params={**SDK, "secret": "guess"})
        assert clients[1].get("/cgi-bin/token", params=SDK).json()["errcode"] == 45011
        for client in clients:
            client.close()
        assert_no_traceback(d)
