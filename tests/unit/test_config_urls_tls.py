"""URLs, TLS settings and the one-pass `check-config` (errors and warnings).

- Every URL key goes through one validator: no credentials (refused without ever echoing
  the password), http(s) only, a host, a valid port.
- `tls_ca_file`, `tls_cert_file`, `tls_key_file`: absolute paths, loaded at config load
  (errors name the key and the reason); one SSL context per distinct triple; the Prober
  hands it to the transport in the `postdeploy.ssl_context` request extension. A real TLS
  server on 127.0.0.1 with a private CA and certificates made here with `openssl`.
- `check-config` reports every problem in one run (a type error does not hide a rule between
  keys), and warnings that keep exit status 0.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from postdeploy.config import Config, ConfigError, parse_config
from postdeploy.probe import Prober
from postdeploy.transport import SSL_CONTEXT
from support.env import child_env

PATH = "/etc/postdeploy/test.toml"
S = 'state_dir = "/s"\n'
PASSWORD = "hunter2-s3cret"
CREDENTIALS = (
    "credentials in a URL are not allowed (they would be logged); "
    "use headers_env or a systemd credential"
)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, PATH)
    return info.value.lines


# -- URLs -------------------------------------------------------------------------------------

# (the key's dotted path, a config in which {url} is that key's value)
URL_KEYS: list[tuple[str, str]] = [
    ("repos.shop.base_url", S + '[repos.shop]\nbase_url = "{url}"\n'),
    (
        "repos.shop.control_url",
        S + '[repos.shop]\nbase_url = "http://127.0.0.1:1"\ncontrol_url = "{url}"\n',
    ),
    (
        "repos.shop.checks[0].url",
        S
        + '[repos.shop]\nbase_url = "http://127.0.0.1:1"\n'
        + '[[repos.shop.checks]]\ntype = "prometheus"\nname = "p"\nurl = "{url}"\n'
        + 'query = "up"\nmax = 1\n',
    ),
    ("alerts[0].url", S + '[[alerts]]\ntype = "webhook"\nurl = "{url}"\n'),
    ("alerts[0].url", S + '[[alerts]]\ntype = "alertmanager"\nurl = "{url}"\n'),
    (
        "alerts[0].api_base",
        S
        + '[[alerts]]\ntype = "telegram"\nbot_token_env = "T"\nchat_id = "1"\n'
        + 'api_base = "{url}"\n',
    ),
]

CREDENTIAL_URLS = [
    f"http://alice:{PASSWORD}@127.0.0.1:8080",
    f"https://alice:{PASSWORD}@example.com/prefix",
    f"http://{PASSWORD}@127.0.0.1",  # a user alone (often a token) is a credential too
    f"http://alice:{PASSWORD}@127.0.0.1:99999/x",  # refused for its credentials first
    f"http://alice:{PASSWORD}/x@127.0.0.1",  # a "/" in the password: not a clean authority
]


def _url_keys() -> list[Any]:
    return [pytest.param(key, text, id=f"{key}-{i}") for i, (key, text) in enumerate(URL_KEYS)]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
@pytest.mark.parametrize(("key", "template"), _url_keys())
def test_credentials_in_any_url_are_refused_without_echoing_them(
    key: str, template: str, url: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(template.format(url=url), PATH)
    if "/x@" in url:  # urlsplit sees host "alice": still refused, for its port
        assert info.value.lines == [
            f"{PATH}: {key}: has an invalid port: must be a number from 0 to 65535"
        ]
    else:
        assert info.value.lines == [f"{PATH}: {key}: {CREDENTIALS}"]
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in repr(info.value.lines)


# (a URL, the message; None: valid)
URL_CASES: list[tuple[str, str | None]] = [
    ("http://127.0.0.1:8080", None),
    ("https://shop.example/api", None),
    ("HTTPS://shop.example", None),
    ("http://[::1]:8080", None),
    ("http://shop.example/users/@me", None),  # an "@" in the path is no credential
    ("http://shop.example/?who=a@b", None),
    ("ftp://shop.example", "must be an http:// or https:// URL with a host"),
    ("shop.example", "must be an http:// or https:// URL with a host"),
    ("http://", "must be an http:// or https:// URL with a host"),
    ("http:///path", "must be an http:// or https:// URL with a host"),
    ("http://shop example", "must not contain whitespace"),
    ("http://shop.example:99999", "has an invalid port: must be a number from 0 to 65535"),
    ("http://shop.example:http", "has an invalid port: must be a number from 0 to 65535"),
    ("http://[::1", "is not a URL: Invalid IPv6 URL"),
]


@pytest.mark.parametrize(("url", "message"), URL_CASES)
@pytest.mark.parametrize(("key", "template"), _url_keys())
def test_one_url_rule_everywhere(key: str, template: str, url: str, message: str | None) -> None:
    text = template.format(url=url)
    if message is None:
        parse_config(text, PATH)
    else:
        assert errors(text) == [f"{PATH}: {key}: {message}"]


def test_base_urls_lose_their_trailing_slash_and_control_url_is_kept() -> None:
    config = parse_config(
        S + '[repos.a]\nbase_url = "http://h:1/app/"\ncontrol_url = "http://gw/ping/"\n', PATH
    )
    assert (config.repos["a"].base_url, config.repos["a"].control_url) == (
        "http://h:1/app",
        "http://gw/ping/",
    )


# -- one pass: every problem, however they mix ------------------------------------------------


def test_a_type_error_does_not_hide_the_rules_between_keys() -> None:
    """Before: pydantic's errors alone; the rules between keys were never reached."""
    text = (
        S
        + "[defaults]\nwindow_s = 'long'\n"
        + f'[repos.shop]\nbase_url = "http://bob:{PASSWORD}@127.0.0.1"\n'
        + "auto_rollback = true\ninterval_s = 1\nprobe_timeout_s = 2\nfail_threshold = 'x'\n"
        + '[repos.b]\nbase_url = "http://127.0.0.1:1"\ntls_key_file = "/k.pem"\n'
    )
    assert sorted(errors(text)) == sorted(
        [
            f"{PATH}: defaults.window_s: Input should be a valid number",
            f"{PATH}: repos.shop.base_url: {CREDENTIALS}",
            f"{PATH}: repos.shop.fail_threshold: Input should be a valid integer",
            f"{PATH}: repos.shop.probe_timeout_s: 2 must be below interval_s (1), "
            "so that a window's probes never overlap",
            f"{PATH}: repos.shop.rollback_command: auto_rollback is on but it is unset",
            f"{PATH}: repos.b.tls_key_file: is set without tls_cert_file (the key's certificate)",
        ]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            S + "[defaults]\ninterval_s = '5'\nprobe_timeout_s = 10\n"
            '[repos.a]\nbase_url = "http://x"\n',
            [f"{PATH}: defaults.interval_s: Input should be a valid number"],
            id="a rule is skipped when a key it reads is invalid",
        ),
        pytest.param(
            S + '[repos.a]\nbase_url = "http://x"\nauto_rollback = true\nrollback_command = 5\n',
            [f"{PATH}: repos.a.rollback_command: Input should be a valid list"],
            id="an invalid rollback_command is not also reported as unset",
        ),
        pytest.param(
            "enabled = 1\n[repos.a]\nauto_rollback = true\n",
            [
                f"{PATH}: state_dir: Field required",
                f"{PATH}: enabled: Input should be a valid boolean",
                f"{PATH}: repos.a.base_url: Field required",
                f"{PATH}: repos.a.rollback_command: auto_rollback is on but it is unset",
            ],
            id="missing required keys",
        ),
    ],
)
def test_problems_are_reported_once_and_only_where_they_are(text: str, expected: list[str]) -> None:
    assert sorted(errors(text)) == sorted(expected)


# -- health_expect ----------------------------------------------------------------------------


def test_health_expect_is_parsed_by_the_checks_grammar_in_defaults_and_repos() -> None:
    text = (
        S
        + "[defaults]\nhealth_expect = ['status == 200', '$.x ==']\n"
        + '[repos.a]\nbase_url = "http://x"\nhealth_expect = ["body containz \\"OK\\""]\n'
        + '[repos.b]\nbase_url = "http://x"\nhealth_expect = []\n'
    )
    assert errors(text) == [
        f"{PATH}: defaults.health_expect: '$.x ==': a value is missing after ==",
        f"{PATH}: repos.a.health_expect: 'body containz \"OK\"': "
        "body takes contains, not_contains or matches",
        f"{PATH}: repos.b.health_expect: needs at least one condition "
        "(unset it for the built-in rule)",
    ]


def test_health_expect_is_resolved_at_load_repo_over_defaults() -> None:
    config = parse_config(
        S
        + "[defaults]\nhealth_expect = ['status == 200']\n"
        + '[repos.a]\nbase_url = "http://x"\n'
        + "[repos.b]\nbase_url = 'http://x'\nhealth_expect = ['$.status == \"UP\"']\n",
        PATH,
    )
    a, b = (config.repos[name].resolved_probe for name in "ab")
    assert a is not None and b is not None
    assert [c.text for c in a.health_expect or ()] == ["status == 200"]
    assert [c.text for c in b.health_expect or ()] == ['$.status == "UP"']
    unset = parse_config(S + '[repos.a]\nbase_url = "http://x"\n', PATH).repos["a"]
    assert unset.resolved_probe is not None and unset.resolved_probe.health_expect is None


# -- TLS: a private CA and certificates, made with openssl -----------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path  # the private CA's certificate
    server_cert: Path  # for 127.0.0.1, signed by the CA
    server_key: Path
    client_cert: Path  # signed by the CA, for client authentication
    client_key: Path
    combined: Path  # the client certificate and its key in one file
    encrypted_key: Path  # the client key under a passphrase
    junk: Path  # not PEM at all


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=postdeploy test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    for name, usage, alt in (
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ):
        _openssl(
            "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=postdeploy test {name}", cwd=d,
        )  # fmt: skip
        (d / f"{name}.ext").write_text(
            f"{alt}extendedKeyUsage={usage}\nauthorityKeyIdentifier=keyid\n"
        )
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=d,
        )  # fmt: skip
    _openssl(
        "pkey", "-in", "client.key", "-aes256", "-passout", "pass:p4ss", "-out", "enc.key", cwd=d
    )
    (d / "combined.pem").write_text((d / "client.pem").read_text() + (d / "client.key").read_text())
    (d / "junk.pem").write_text("not a certificate\n")
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        combined=d / "combined.pem",
        encrypted_key=d / "enc.key",
        junk=d / "junk.pem",
    )


def tls_config(url: str, **tls: Path | str) -> str:
    keys = "".join(f"{key} = {json.dumps(str(value))}\n" for key, value in tls.items())
    return S + f'[repos.shop]\nbase_url = "{url}"\n' + keys


def test_tls_files_load_in_every_allowed_combination(pki: Pki) -> None:
    for tls in (
        {"tls_ca_file": pki.ca},
        {"tls_cert_file": pki.client_cert, "tls_key_file": pki.client_key},
        {"tls_cert_file": pki.combined},  # the key inside the certificate's file
        {"tls_ca_file": pki.ca, "tls_cert_file": pki.client_cert, "tls_key_file": pki.client_key},
    ):
        config = parse_config(tls_config("https://127.0.0.1:1", **tls), PATH)
        settings = config.repos["shop"].resolved_probe
        assert settings is not None and isinstance(settings.ssl_context, ssl.SSLContext), tls


def test_tls_problems_name_the_key_and_the_reason(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tls_ca_file": "ca.pem"}, "repos.shop.tls_ca_file: must be an absolute path"),
        (
            {"tls_key_file": pki.client_key},
            "repos.shop.tls_key_file: is set without tls_cert_file (the key's certificate)",
        ),
        (
            {"tls_ca_file": missing},
            f"repos.shop.tls_ca_file: {missing} cannot be loaded: No such file or directory",
        ),
        (
            {"tls_ca_file": pki.junk},
            f"repos.shop.tls_ca_file: {pki.junk} cannot be loaded: no certificate or crl found",
        ),
        (
            {"tls_cert_file": pki.client_cert},  # no key, and none in the file
            f"repos.shop.tls_cert_file: {pki.client_cert} cannot be loaded: "
            "not a PEM certificate with its matching private key",
        ),
        (
            {"tls_cert_file": pki.client_cert, "tls_key_file": pki.server_key},
            f"repos.shop.tls_cert_file: {pki.client_cert} with {pki.server_key} cannot be "
            "loaded: key values mismatch",
        ),
        (
            {"tls_cert_file": pki.client_cert, "tls_key_file": pki.encrypted_key},
            "repos.shop.tls_key_file: the private key is encrypted; postdeploy cannot ask for "
            "a passphrase (use an unencrypted key that only the daemon's user can read)",
        ),
    ]
    for tls, line in cases:
        assert errors(tls_config("https://127.0.0.1:1", **tls)) == [f"{PATH}: {line}"], tls


def test_one_context_per_distinct_triple_and_a_defaults_problem_reported_once(pki: Pki) -> None:
    repos = (
        "".join(f'[repos.{name}]\nbase_url = "https://127.0.0.1:1"\n' for name in ("a", "b"))
        + f'[repos.c]\nbase_url = "https://127.0.0.1:1"\ntls_cert_file = "{pki.combined}"\n'
    )
    config = parse_config(S + f'[defaults]\ntls_ca_file = "{pki.ca}"\n' + repos, PATH)
    contexts = [config.repos[n].resolved_probe.ssl_context for n in "abc"]  # type: ignore[union-attr]
    assert contexts[0] is contexts[1]  # the same triple: one context, shared
    assert contexts[2] is not contexts[0]  # (ca, cert, None): another
    assert errors(S + '[defaults]\ntls_ca_file = "/nonexistent/ca.pem"\n' + repos) == [
        f"{PATH}: defaults.tls_ca_file: /nonexistent/ca.pem cannot be loaded: "
        "No such file or directory",
    ]


# -- TLS end to end: a real server on 127.0.0.1 ---------------------------------------------


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that refuses our certificate is part of the tests


@pytest.fixture(params=[False, True], ids=["server-auth", "client-auth"])
def tls_server(request: pytest.FixtureRequest, pki: Pki) -> Iterator[tuple[str, bool]]:
    """An HTTPS server on 127.0.0.1 with a certificate of the private CA; with client-auth,
    it also requires a client certificate signed by that CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if request.param:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca)
    server = _TlsServer(("127.0.0.1", 0), _Health)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", request.param
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def health(prober: Prober, config: Config) -> tuple[bool, str]:
    row = await prober.probe(config.repos["shop"], 5.0, 0, time.time(), False)
    return row.health_ok, row.detail


async def test_without_tls_settings_the_private_ca_is_not_trusted(
    prober: Prober, tls_server: tuple[str, bool]
) -> None:
    """The control: the server is real TLS, and the system's CAs do not know its CA."""
    url, _ = tls_server
    ok, detail = await health(prober, parse_config(tls_config(url), PATH))
    assert not ok
    assert "certificate verify failed" in detail, detail


async def test_a_private_ca_and_a_client_certificate(
    prober: Prober, tls_server: tuple[str, bool], pki: Pki
) -> None:
    url, client_auth = tls_server
    tls: dict[str, Path] = {"tls_ca_file": pki.ca}
    if client_auth:
        tls |= {"tls_cert_file": pki.client_cert, "tls_key_file": pki.client_key}
    ok, detail = await health(prober, parse_config(tls_config(url, **tls), PATH))
    assert ok, detail


class _Recorder(httpx.AsyncBaseTransport):
    """Stands in for the transport: records each request's URL and extensions."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((str(request.url), request.extensions.get(SSL_CONTEXT)))
        return httpx.Response(200, json={"status": "ok"}, stream=httpx.ByteStream(b""))


async def test_the_prober_hands_each_repo_its_context_in_the_request_extension(
    prober: Prober, pki: Pki
) -> None:
    """Every request to base_url carries the repo's context (built at load, the same object
    each tick); the control probe and the Prometheus query do not (not the service's TLS)."""
    text = (
        S
        + f'[repos.shop]\nbase_url = "https://shop.test"\ntls_ca_file = "{pki.ca}"\n'
        + 'fivexx_paths = ["/q"]\ncontrol_url = "https://gw.test/"\n'
        + '[[repos.shop.checks]]\nname = "c"\npath = "/c"\n'
        + '[[repos.shop.checks]]\ntype = "prometheus"\nname = "p"\nurl = "http://prom.test"\n'
        + 'query = "up"\nmax = 1\n'
        + '[repos.plain]\nbase_url = "https://plain.test"\n'
    )
    config = parse_config(text, PATH)
    recorder = _Recorder()
    prober._transport = recorder
    for tick in range(2):
        for repo in ("shop", "plain"):
            await prober.probe(config.repos[repo], 5.0, tick, time.time(), False)
    context = config.repos["shop"].resolved_probe.ssl_context  # type: ignore[union-attr]
    assert isinstance(context, ssl.SSLContext)
    by_url: dict[str, set[int]] = {}
    for url, extension in recorder.seen:
        by_url.setdefault(url.split("?")[0], set()).add(id(extension))
    assert by_url == {
        "https://shop.test/health": {id(context)},
        "https://shop.test/q": {id(context)},
        "https://shop.test/c": {id(context)},
        "https://gw.test/": {id(None)},
        "http://prom.test/api/v1/query": {id(None)},
        "https://plain.test/health": {id(None)},
    }


# -- check-config: errors and warnings in one run ---------------------------------------------


def run_check_config(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postdeploy", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(env),
        check=False,
    )


def test_check_config_warns_and_still_exits_0(tmp_path: Path) -> None:
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    repos = {
        "ok": hook,
        "relative": "hook.sh",
        "missing": tmp_path / "nope.sh",
        "folder": tmp_path,
        "plain": plain,
    }
    text = S.replace("/s", str(tmp_path / "state"))
    for name, program in repos.items():
        text += (
            f'[repos.{name}]\nbase_url = "http://127.0.0.1:1"\n'
            f"rollback_command = [{json.dumps(str(program))}, '--rollback']\n"
        )
    text += (
        '[[repos.ok.checks]]\nname = "c"\npath = "/c"\n'
        'headers_env = { Authorization = "PD_TEST_SET", "X-Other" = "PD_TEST_UNSET" }\n'
        '[[alerts]]\ntype = "webhook"\nurl_env = "PD_TEST_HOOK_URL"\nsecret_env = "PD_TEST_SET"\n'
        '[[alerts]]\ntype = "telegram"\nbot_token_env = "PD_TEST_BOT"\nchat_id = "1"\n'
        f"[[alerts]]\ntype = 'command'\nargv = [{json.dumps(str(plain))}]\n"
    )
    path = tmp_path / "config.toml"
    path.write_text(text)
    result = run_check_config(path, PD_TEST_SET="set-value", PD_TEST_HOOK_URL="http://h")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok (5 repos")
    unset = "is not set here (nor a systemd credential of that name)"
    assert sorted(result.stderr.splitlines()) == sorted(
        [
            f"{path}: repos.relative.rollback_command: warning: 'hook.sh' is not an absolute "
            "path: the daemon would search its own PATH",
            f"{path}: repos.missing.rollback_command: warning: {tmp_path}/nope.sh does not exist",
            f"{path}: repos.folder.rollback_command: warning: {tmp_path} is not a file",
            f"{path}: repos.plain.rollback_command: warning: {plain} is not executable",
            f"{path}: alerts[2].argv: warning: {plain} is not executable",
            f"{path}: repos.ok.checks[0].headers_env.X-Other: warning: "
            f"environment variable PD_TEST_UNSET {unset}",
            f"{path}: alerts[1].bot_token_env: warning: environment variable PD_TEST_BOT {unset}",
        ]
    )


def test_check_config_reports_errors_and_warnings_together(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        S
        + "[defaults]\nwindow_s = 'long'\n"
        + '[repos.a]\nbase_url = "http://127.0.0.1:1"\nauto_rollback = true\n'
        + '[repos.b]\nbase_url = "http://127.0.0.1:1"\nrollback_command = ["hook.sh"]\n'
    )
    result = run_check_config(path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}: defaults.window_s: Input should be a valid number",
        f"{path}: repos.a.rollback_command: auto_rollback is on but it is unset",
        f"{path}: repos.b.rollback_command: warning: 'hook.sh' is not an absolute path: "
        "the daemon would search its own PATH",
    ]


def test_a_systemd_credential_counts_as_set(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "PD_TEST_BOT").write_text("123:abc-token")
    path = tmp_path / "config.toml"
    path.write_text(
        S + '[[alerts]]\ntype = "telegram"\nbot_token_env = "PD_TEST_BOT"\nchat_id = "1"\n'
    )
    assert run_check_config(path, CREDENTIALS_DIRECTORY=str(credentials)).stderr == ""
    assert "PD_TEST_BOT" in run_check_config(path).stderr
