"""The real system, as processes, for the browser tests.

A fresh Postgres database on the test instance's server, the schema
migrated by `chat-persister migrate`, then one persister, one presence
service and two gateways (CHAT_PROFILE=test, their own AMQP and Redis
prefixes), and nginx in front of the gateways (deploy/services.sh
nginx-start), the way deploy/up.sh runs them. Logs go to
.data/test/logs/browser-*.log.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = ROOT / ".data" / "test" / "logs"
# Pid files of the services a run started, so the next run can end any that
# a killed run left behind.
RUN_DIR = ROOT / ".data" / "test" / "run"

PUBLIC_PORT = 21080
# (listen, metrics) of each gateway.
GATEWAY_PORTS = [(21081, 21181), (21082, 21182)]
PERSISTER_METRICS_PORT = 21191
PRESENCE_METRICS_PORT = 21192

READY_TIMEOUT_S = 30


# nginx's fail_timeout for each gateway (deploy/services/nginx.sh).
NGINX_FAIL_TIMEOUT_S = 5


class SystemError_(RuntimeError):
    """The system could not be started (a missing binary, a service that
    would not become ready): the tests cannot run."""


def bin_dir() -> Path:
    explicit = os.environ.get("CHAT_BIN_DIR")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache/mapmo-chat/target")
    return Path(target) / "debug"


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemError_(
            f"{name} is not set: run through tests/browser/run.sh "
            '(or eval "$(deploy/services.sh env test)")'
        )
    return value


# The test profile's server API key (config/test.toml).
SERVER_KEY = "test-a:test-server-api-key-a-not-a-secret-0000000"


def http(method: str, url: str, body=None, token: str | None = None, timeout=5.0, authorization=None):
    """(status, parsed JSON or text) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    elif authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_until(what: str, condition, timeout: float = READY_TIMEOUT_S, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class Postgres:
    """psql against the test instance's server, with libpq variables (a
    password on psql's command line would show in ps)."""

    def __init__(self, url: str):
        self.url = urllib.parse.urlsplit(url)
        self.env = dict(os.environ)
        self.env.update(
            PGUSER=urllib.parse.unquote(self.url.username or "chat"),
            PGHOST=self.url.hostname or "127.0.0.1",
            PGPORT=str(self.url.port or 5432),
            PGDATABASE="postgres",
        )
        if self.url.password:
            self.env["PGPASSWORD"] = urllib.parse.unquote(self.url.password)

    def run(self, sql: str):
        subprocess.run(
            ["psql", "-Atq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )

    def query(self, sql: str) -> list[str]:
        result = subprocess.run(
            ["psql", "-Atq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            env=self.env, check=True, capture_output=True, text=True,
        )
        return result.stdout.split()

    def url_of(self, database: str) -> str:
        return urllib.parse.urlunsplit(self.url._replace(path=f"/{database}"))


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self):
        self.log = LOG_DIR / f"browser-{self.name}.log"
        self.pid_file = RUN_DIR / f"browser-{self.name}.pid"

    def start(self):
        with open(self.log, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.pid_file.write_text(str(self.process.pid))

    def end_leftover(self):
        """Ends the process an earlier, killed run left (by its recorded pid,
        and only if that pid is still one of our binaries)."""
        try:
            pid = int(self.pid_file.read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError):
            return
        if command.decode(errors="replace") == self.argv[0]:
            os.kill(pid, signal.SIGKILL)
            wait_until(f"the leftover {self.name} ({pid}) to end",
                       lambda: not Path(f"/proc/{pid}").exists(), 10)
        self.pid_file.unlink(missing_ok=True)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int):
        if self.running():
            self.process.send_signal(sig)

    def kill(self):
        """SIGKILL, as a crash: no close frames, no draining."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.pid_file.unlink(missing_ok=True)

    def stop(self):
        if self.running():
            self.process.send_signal(signal.SIGCONT)  # in case a test paused it
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.pid_file.unlink(missing_ok=True)


class System:
    """Everything the browser tests talk to, through nginx on PUBLIC_PORT."""

    def __init__(self):
        self._balancer_settles_at = 0.0
        self.bin = bin_dir()
        for binary in ("chat-gateway", "chat-persister", "chat-presence"):
            if not os.access(self.bin / binary, os.X_OK):
                raise SystemError_(
                    f"{self.bin / binary} is missing: build it (cargo build) or set CHAT_BIN_DIR"
                )
        self.public = f"http://127.0.0.1:{PUBLIC_PORT}"
        self.postgres = Postgres(required_env("CHAT_DATABASE__URL"))
        unique = secrets.token_hex(6)
        self.database = f"test_browser_{unique}"
        prefix = f"b{unique}"
        self.env = dict(os.environ)
        self.env.update(
            CHAT_PROFILE="test",
            CHAT_DATABASE__URL=self.postgres.url_of(self.database),
            CHAT_AMQP__URL=required_env("CHAT_AMQP__URL"),
            CHAT_REDIS__URL=required_env("CHAT_REDIS__URL"),
            CHAT_AMQP__PREFIX=prefix,
            CHAT_REDIS__PREFIX=prefix,
            CHAT_LOG__FILTER="info,sqlx=warn,lapin=warn",
            CHAT_PERSISTER__METRICS_LISTEN=f"127.0.0.1:{PERSISTER_METRICS_PORT}",
            CHAT_PRESENCE__METRICS_LISTEN=f"127.0.0.1:{PRESENCE_METRICS_PORT}",
        )
        # The client under test is the copy built into the gateway binary,
        # the one that ships (deploy/test.sh builds the binaries just
        # before). BROWSER_TEST_TREE=1 serves gateway/web/ from the tree
        # instead, read on each request: for working on the client without
        # rebuilding.
        if os.environ.get("BROWSER_TEST_TREE") == "1":
            self.env["CHAT_GATEWAY__WEB_DIR"] = str(ROOT / "gateway" / "web")
        self.persister = Service("persister", [str(self.bin / "chat-persister")], self.env)
        self.presence = Service("presence", [str(self.bin / "chat-presence")], self.env)
        self.gateways = []
        for n, (port, metrics) in enumerate(GATEWAY_PORTS, start=1):
            env = dict(self.env)
            env.update(
                CHAT_GATEWAY__LISTEN=f"127.0.0.1:{port}",
                CHAT_GATEWAY__METRICS_LISTEN=f"127.0.0.1:{metrics}",
            )
            self.gateways.append(Service(f"gateway-{n}", [str(self.bin / "chat-gateway")], env))
        self.nginx_started = False
        self.database_created = False

    # ------------------------------------------------------------ lifecycle

    def start(self):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        for old in LOG_DIR.glob("browser-*.log"):
            old.unlink()  # this run's logs only (a restarted gateway appends)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        for service in [self.persister, self.presence, *self.gateways]:
            service.end_leftover()
        # (nginx on PUBLIC_PORT may be left running: nginx-start takes it over.)
        for leftover in self.postgres.query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'test\\_browser\\_%'"
        ):
            self.postgres.run(f'DROP DATABASE IF EXISTS "{leftover}" WITH (FORCE)')
        for port in [PERSISTER_METRICS_PORT, PRESENCE_METRICS_PORT] + [
            p for pair in GATEWAY_PORTS for p in pair
        ]:
            self._check_port_free(port)
        self.postgres.run(f'CREATE DATABASE "{self.database}"')
        self.database_created = True
        migrate = subprocess.run(
            [str(self.bin / "chat-persister"), "migrate"], env=self.env,
            capture_output=True, text=True, timeout=120,
        )
        (LOG_DIR / "browser-migrate.log").write_text(migrate.stdout + migrate.stderr)
        if migrate.returncode != 0:
            raise SystemError_(f"chat-persister migrate failed:\n{migrate.stderr[-2000:]}")
        self.persister.start()
        self.presence.start()
        for index in range(len(self.gateways)):
            self.start_gateway(index)
        upstreams = [f"127.0.0.1:{port}" for port, _ in GATEWAY_PORTS]
        self._services_sh("nginx-start", "test", str(PUBLIC_PORT), *upstreams)
        self.nginx_started = True
        wait_until("nginx to answer", lambda: http("GET", f"{self.public}/ready")[0] == 200)
        self._balancer_settles_at = 0.0  # nothing has failed yet

    def stop(self):
        errors = []
        if self.nginx_started:
            try:
                self._services_sh("nginx-stop", "test")
            except Exception as error:  # noqa: BLE001 - stop the rest regardless
                errors.append(error)
        for service in [*self.gateways, self.presence, self.persister]:
            service.stop()
        self._delete_queues()
        if self.database_created:
            try:
                self.postgres.run(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            except Exception as error:  # noqa: BLE001
                errors.append(error)
        if errors:
            raise errors[0]

    def start_gateway(self, index: int):
        gateway = self.gateways[index]
        gateway.start()
        port = GATEWAY_PORTS[index][0]

        def ready():
            if not gateway.running():
                raise SystemError_(f"{gateway.name} exited; see {gateway.log}")
            return http("GET", f"http://127.0.0.1:{port}/ready")[0] == 200

        wait_until(f"{gateway.name} to be ready (log: {gateway.log})", ready)
        self._balancer_settles_at = time.monotonic() + NGINX_FAIL_TIMEOUT_S + 0.5

    def kill_gateway(self, index: int):
        self.gateways[index].kill()

    def balancer_settled(self):
        """Waits until nginx takes both gateways again: it skips one for
        `fail_timeout` (5 s) after a connection to it failed, which can
        happen until the moment it is back up. A test that stops a gateway
        while the other is still skipped leaves no gateway at all."""
        wait = self._balancer_settles_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def terminate_gateway(self, index: int):
        """SIGTERM, as a deploy's restart: the gateway stops accepting,
        answers its sessions' sends in flight (within
        gateway.shutdown_grace_ms), closes them with 1012 and exits. Returns
        at once; gateway_exit waits for the end."""
        self.gateways[index].signal(signal.SIGTERM)

    def gateway_exit(self, index: int, timeout: float = 10) -> int:
        """Waits for a gateway told to stop; its exit status."""
        gateway = self.gateways[index]
        status = gateway.process.wait(timeout=timeout)
        gateway.pid_file.unlink(missing_ok=True)
        return status

    def pause_persister(self):
        self.persister.signal(signal.SIGSTOP)

    def resume_persister(self):
        self.persister.signal(signal.SIGCONT)

    # -------------------------------------------------------------- queries

    def metric(self, gateway: int, name: str) -> float:
        """A gateway's unlabelled metric (counters with or without _total)."""
        port = GATEWAY_PORTS[gateway][1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key in (name, f"{name}_total"):
                return float(value)
        return 0.0

    def sessions(self) -> list[int]:
        """Open WebSocket sessions on each gateway (0 for a dead one)."""
        counts = []
        for index, gateway in enumerate(self.gateways):
            if not gateway.running():
                counts.append(0)
                continue
            counts.append(int(self.metric(index, "gateway_connections_active")))
        return counts

    def direct(self) -> str:
        """A running gateway's own URL. The tests' own API calls (setting up,
        checking history) go there rather than through nginx, which answers
        502 to a POST it sent down a kept-alive connection of a gateway that
        was just killed (nginx does not retry a non-idempotent request)."""
        for (port, _), gateway in zip(GATEWAY_PORTS, self.gateways):
            if gateway.running():
                return f"http://127.0.0.1:{port}"
        raise AssertionError("no gateway is running")

    def token(self, user_id: int, name: str | None = None) -> str:
        status, body = http("POST", f"{self.direct()}/api/dev/token", {"user_id": user_id, "name": name})
        assert status == 200, f"dev token: {status} {body}"
        return body["token"]

    def server_api(self, method: str, path: str, body=None):
        """A call of the host site's server API, with the test key."""
        status, answer = http(method, f"{self.direct()}{path}", body, authorization=f"ApiKey {SERVER_KEY}")
        assert 200 <= status < 300, f"{method} {path}: {status} {answer}"
        return answer

    def api(self, user_id: int, method: str, path: str, body=None):
        status, answer = http(method, f"{self.direct()}{path}", body, token=self.token(user_id))
        assert 200 <= status < 300, f"{method} {path}: {status} {answer}"
        return answer

    # -------------------------------------------------------------- helpers

    def _delete_queues(self):
        """Best effort: this run's durable queues (persist partitions, dead
        letters, presence), so standalone runs leave nothing behind in the
        broker (deploy/test.sh also resets it before each run)."""
        rabbitmqctl = [str(ROOT / "deploy" / "services.sh"), "rabbitmqctl", "test", "-q"]
        listed = subprocess.run(
            [*rabbitmqctl, "list_queues", "name"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        prefix = self.env["CHAT_AMQP__PREFIX"] + "."
        names = [n.strip() for n in listed.stdout.splitlines() if n.strip().startswith(prefix)]
        deletes = [
            subprocess.Popen([*rabbitmqctl, "delete_queue", name], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name in names
        ]
        for process in deletes:
            process.wait(timeout=60)

    def _services_sh(self, *args: str):
        result = subprocess.run(
            [str(ROOT / "deploy" / "services.sh"), *args], cwd=ROOT,
            capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise SystemError_(f"deploy/services.sh {' '.join(args)} failed:\n{result.stderr}")

    @staticmethod
    def _check_port_free(port: int):
        import socket

        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise SystemError_(
                    f"port {port} is in use: is another browser test run going on?"
                )
