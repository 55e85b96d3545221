"""broker.config: flags, config files, durations and sizes, against nats-server's behaviour."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest

from broker.config import (
    VERSION,
    ConfigError,
    Options,
    load_config_file,
    parse_args,
    parse_duration,
    parse_size,
)
from broker.confparse import ConfParseError, Item, parse_text

NATS = shutil.which("nats-server")


def conf(tmp_path, text: str, name: str = "test.conf") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


# ------------------------------------------------------------------------------ flags


def test_defaults_are_nats_server_defaults():
    o = parse_args([])
    assert (o.host, o.port, o.http_port, o.max_payload, o.max_pending) == ("0.0.0.0", 4222, 0, 1048576, 64 * 1024 * 1024)
    assert (o.max_connections, o.ping_interval_s, o.ping_max, o.auth_timeout_s) == (65536, 120.0, 2, 2.0)
    assert (o.write_deadline_s, o.lame_duck_duration_s, o.lame_duck_grace_period_s) == (10.0, 120.0, 10.0)
    assert o.routes == [] and not o.jetstream and o.sync_interval == "always"


@pytest.mark.parametrize(
    "argv",
    [["-sd", "/d"], ["-sd=/d"], ["--sd=/d"], ["--sd", "/d"], ["--store_dir", "/d"], ["-store_dir=/d"]],
)
def test_string_flag_forms(argv):
    assert parse_args(argv).store_dir == "/d"


@pytest.mark.parametrize(
    "argv,port",
    [(["-p", "5000"], 5000), (["--port=5001"], 5001), (["-port", "0x10"], 16), (["-p", "010"], 8), (["-p", "0"], 4222)],
)
def test_int_flag_forms(argv, port):
    assert parse_args(argv).port == port


def test_random_port_flag():
    assert parse_args(["-p", "-1"]).port == 0  # bind a random port


def test_aliases():
    o = parse_args(["-a", "127.0.0.1", "-n", "x1", "-m", "8222", "-l", "/tmp/l.log", "--user", "u", "--pass", "p"])
    assert (o.host, o.server_name, o.http_port, o.log_file, o.username, o.password) == (
        "127.0.0.1", "x1", 8222, "/tmp/l.log", "u", "p")
    assert parse_args(["--net", "::1"]).host == "::1"
    assert parse_args(["--addr=10.0.0.1"]).host == "10.0.0.1"
    assert parse_args(["--name", "a"]).server_name == "a"
    assert parse_args(["--server_name", "b"]).server_name == "b"
    assert parse_args(["--http_port", "8223"]).http_port == 8223
    assert parse_args(["--auth", "tok"]).token == "tok"
    assert parse_args(["--log", "f"]).log_file == "f"


def test_monitor_host_follows_client_host():
    o = parse_args(["-a", "127.0.0.1", "-m", "8222"])
    assert o.http_host == "127.0.0.1"


@pytest.mark.parametrize(
    "argv,debug,trace",
    [
        (["-D"], True, False),
        (["-V"], False, True),
        (["-DV"], True, True),
        (["--debug", "--trace"], True, True),
        (["-D=false"], False, False),
        (["-DV=false"], False, False),
        (["-DV", "-V=false"], True, True),  # nats-server applies -DV after the single flags
        (["-VV"], False, True),
        (["-DVV"], True, True),
    ],
)
def test_log_flags(argv, debug, trace):
    o = parse_args(argv)
    assert (o.debug, o.trace) == (debug, trace)


@pytest.mark.parametrize("value,expected", [("true", True), ("1", True), ("T", True), ("false", False), ("0", False),
                                            ("F", False), ("FALSE", False), ("True", True)])
def test_bool_flag_values(value, expected):
    assert parse_args([f"-js={value}"]).jetstream is expected


def test_bool_flag_takes_no_separate_value():
    # "-js false": the bool takes no value, so "false" is a stray command, as in nats-server
    with pytest.raises(ConfigError, match='unrecognized command: "false"'):
        parse_args(["-js", "false"])


def test_jetstream_flags():
    o = parse_args(["-js", "-sd", "/tmp/x"])
    assert o.jetstream and o.store_dir == "/tmp/x"
    assert parse_args(["--jetstream"]).jetstream


@pytest.mark.parametrize(
    "argv,message",
    [
        (["-xyz"], "flag provided but not defined: -xyz"),
        (["--xyz=1"], "flag provided but not defined: -xyz"),
        (["-p"], "flag needs an argument: -p"),
        (["-p", "abc"], 'invalid value "abc" for flag -p: parse error'),
        (["-p", "99999999999999999999"], 'invalid value "99999999999999999999" for flag -p: value out of range'),
        (["-js=maybe"], 'invalid boolean value "maybe" for -js: parse error'),
        (["---p"], "bad flag syntax: ---p"),
        (["-=1"], "bad flag syntax: -=1"),
    ],
)
def test_flag_syntax_errors(argv, message):
    with pytest.raises(ConfigError) as ei:
        parse_args(argv)
    assert str(ei.value) == message
    assert ei.value.usage


def test_other_errors_do_not_ask_for_usage():
    with pytest.raises(ConfigError) as ei:
        parse_args(["foo"])
    assert str(ei.value) == 'unrecognized command: "foo"' and not ei.value.usage


def test_double_dash_ends_flags():
    with pytest.raises(ConfigError, match='unrecognized command: "-v"'):
        parse_args(["-p=1", "--", "-v"])


def test_version_and_help(capsys):
    for argv in (["-v"], ["--version"], ["version"], ["-js=false", "-v"]):
        with pytest.raises(SystemExit) as ei:
            parse_args(argv)
        assert ei.value.code == 0
        assert capsys.readouterr().out == f"nats-server: v{VERSION}\n"
    for argv in (["-h"], ["--help"], ["help"]):
        with pytest.raises(SystemExit) as ei:
            parse_args(argv)
        assert ei.value.code == 0
        out = capsys.readouterr().out
        assert "Usage: nats-server [options]" in out and "--store_dir" in out


def test_check_config_needs_a_file():
    with pytest.raises(ConfigError, match=r"must specify \[-c, --config\] option"):
        parse_args(["-t"])


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("certs")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return str(cert), str(key)


def test_tls_flags(certs):
    cert, key = certs
    o = parse_args(["--tlscert", cert, "--tlskey", key])
    assert o.tls and (o.tls_cert, o.tls_key, o.tls_verify) == (cert, key, False)
    o = parse_args(["--tlsverify", f"--tlscert={cert}", f"--tlskey={key}", f"--tlscacert={cert}"])
    assert o.tls and o.tls_verify and o.tls_ca == cert
    assert o.auth_timeout_s == 3.0  # tls timeout + 1, as nats-server
    with pytest.raises(ConfigError, match="TLS Server certificate must be present and valid"):
        parse_args(["--tls"])
    with pytest.raises(ConfigError, match="TLS Server private key must be present and valid"):
        parse_args(["--tls", "--tlscert", cert])
    with pytest.raises(ConfigError, match="error parsing X509 certificate/key pair: open /nonexistent.pem: no such"):
        parse_args(["--tls", "--tlscert", "/nonexistent.pem", "--tlskey", key])
    with pytest.raises(ConfigError, match="error parsing X509 certificate/key pair"):
        parse_args(["--tls", "--tlscert", key, "--tlskey", cert])
    with pytest.raises(ConfigError, match="failed to parse root ca certificate"):
        parse_args(["--tlscert", cert, "--tlskey", key, "--tlscacert", __file__])
    assert not parse_args(["--tls=false", "--tlscert", "c"]).tls


def test_cluster_flags():
    o = parse_args(["--cluster", "nats://127.0.0.1:6222", "--routes", "nats://a:1, nats://b:2", "--cluster_name", "c"])
    assert (o.cluster_host, o.cluster_port, o.cluster_name) == ("127.0.0.1", 6222, "c")
    assert o.routes == ["nats://a:1", "nats://b:2"]
    o = parse_args(["--cluster_listen=nats://u:p@0.0.0.0:-1", "--cluster_advertise", "h:1", "--no_advertise"])
    assert (o.cluster_port, o.cluster_username, o.cluster_password) == (-1, "u", "p")
    assert o.cluster_advertise == "h:1" and o.no_advertise
    with pytest.raises(ConfigError, match="solicited routes require cluster capabilities, e.g. --cluster"):
        parse_args(["--routes", "nats://a:1"])
    with pytest.raises(ConfigError, match="expected cluster password to be set"):
        parse_args(["--cluster", "nats://u@h:1"])
    with pytest.raises(ConfigError, match="missing port"):
        parse_args(["--cluster", "nats://h"])


def test_client_advertise_flag():
    assert parse_args(["--client_advertise", "example.com:4222"]).client_advertise == "example.com:4222"


def test_no_max_payload_flag():
    # nats-server has no --max_payload flag
    with pytest.raises(ConfigError, match="flag provided but not defined: -max_payload"):
        parse_args(["--max_payload", "1MB"])


def test_port_range():
    with pytest.raises(ConfigError, match="port 70000 out of range"):
        parse_args(["-p", "70000"])


def test_help_tls(capsys):
    with pytest.raises(SystemExit) as ei:
        parse_args(["--help_tls"])
    assert ei.value.code == 0 and "cert_file" in capsys.readouterr().out


# ------------------------------------------------------------------- durations, sizes


@pytest.mark.parametrize(
    "text,seconds",
    [("2m", 120.0), ("1.5s", 1.5), ("500ms", 0.5), ("1h2m", 3720.0), ("1h2m3.5s", 3723.5), (".5s", 0.5),
     ("0", 0.0), ("-1s", -1.0), ("10us", 1e-05), ("3µs", 3e-06), ("100ns", 1e-07), (30, 30.0), (1.5, 1.5),
     ("30", 30.0), ("2.5", 2.5)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text,message",
    [("1sec", 'time: unknown unit "sec" in duration "1sec"'), ("", 'time: invalid duration ""'),
     ("abc", 'time: invalid duration "abc"'), ("1d", 'time: unknown unit "d" in duration "1d"'),
     ("1m5", 'time: missing unit in duration "1m5"'), (".", 'time: invalid duration "."')],
)
def test_parse_duration_errors(text, message):
    with pytest.raises(ValueError) as ei:
        parse_duration(text)
    assert str(ei.value) == message


@pytest.mark.parametrize(
    "value,size",
    [(1024, 1024), ("1024", 1024), ("1MB", 1 << 20), ("64MiB", 64 << 20), ("1Mi", 1 << 20), ("1mb", 1 << 20),
     ("1G", 10**9), ("1GB", 1 << 30), ("1K", 1000), ("1k", 1000), ("1KB", 1024), ("2T", 2 * 10**12), ("-1", -1)],
)
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["1.5", "abc", "1X", "MB", "", "1 MB", True])
def test_parse_size_errors(value):
    with pytest.raises(ValueError):
        parse_size(value)


# ----------------------------------------------------------------------- config files


def test_full_config_file(tmp_path):
    path = conf(tmp_path, """
        # a comment
        listen: 127.0.0.1:4333
        server_name = srv1
        http: 8222
        max_payload: 2MB
        max_control_line 8KB
        max_pending: 100MB
        max_connections: 100
        max_subscriptions: 10
        ping_interval: "30s"
        ping_max: 5
        write_deadline "5s"
        lame_duck_duration: "45s"
        lame_duck_grace_period: "5s"
        debug: true; trace: off
        logfile: "/tmp/nats.log"
        client_advertise: "example.com:4333"
        authorization {
          user: alice
          password: "s3cret"
          timeout: 3
        }
        jetstream {
          store_dir: /tmp/js   // trailing comment
          max_mem: 1G
          max_file: "10G"
          sync_interval: "2m"
        }
        cluster {
          name: c1
          listen: 0.0.0.0:6222
          advertise: "10.0.0.1:6222"
          no_advertise: true
          routes = [
            nats://a:6222
            nats://b:6222, "nats://c:6222"
          ]
        }
    """)
    o = load_config_file(path)
    assert (o.host, o.port, o.server_name, o.http_host, o.http_port) == ("127.0.0.1", 4333, "srv1", "127.0.0.1", 8222)
    assert (o.max_payload, o.max_control_line, o.max_pending) == (2 << 20, 8192, 100 << 20)
    assert (o.max_connections, o.max_subscriptions, o.ping_interval_s, o.ping_max) == (100, 10, 30.0, 5)
    assert (o.write_deadline_s, o.lame_duck_duration_s, o.lame_duck_grace_period_s) == (5.0, 45.0, 5.0)
    assert (o.debug, o.trace, o.log_file, o.client_advertise) == (True, False, "/tmp/nats.log", "example.com:4333")
    assert (o.username, o.password, o.token, o.auth_timeout_s) == ("alice", "s3cret", "", 3.0)
    assert o.jetstream and o.store_dir == "/tmp/js" and o.sync_interval == "2m"
    assert (o.max_memory_store, o.max_file_store) == (10**9, 10 << 30)
    assert (o.cluster_name, o.cluster_host, o.cluster_port) == ("c1", "0.0.0.0", 6222)
    assert o.cluster_advertise == "10.0.0.1:6222" and o.no_advertise
    assert o.routes == ["nats://a:6222", "nats://b:6222", "nats://c:6222"]
    assert o.config_file == path


@pytest.mark.parametrize(
    "text,attrs",
    [
        ("port: 4333", {"port": 4333}),
        ("port = 4333", {"port": 4333}),
        ("port 4333", {"port": 4333}),
        ('"port": 4333', {"port": 4333}),
        ("{\n port: 4333,\n debug: true\n}", {"port": 4333, "debug": True}),
        ("host: 127.0.0.1\nport: 1", {"host": "127.0.0.1", "port": 1}),
        ("net: '::1'", {"host": "::1"}),
        ('listen: "[::1]:4444"', {"host": "::1", "port": 4444}),
        ("listen: 4444", {"host": "0.0.0.0", "port": 4444}),
        ("http: 127.0.0.1:8222", {"http_host": "127.0.0.1", "http_port": 8222}),
        ("http_port: 8223", {"http_port": 8223}),
        ("monitor_port: 8224", {"http_port": 8224}),
        ("log_file: a.log", {"log_file": "a.log"}),
        ("trace: yes\ndebug: on", {"trace": True, "debug": True}),
        ("debug: TRUE", {"debug": True}),
        ("max_payload: 1KiB", {"max_payload": 1024}),
        ("max_payload: 1k", {"max_payload": 1000}),
        ("max_connections: 0", {"max_connections": -1}),  # nats-server: 0 refuses every client
        ("max_subs: 3", {"max_subscriptions": 3}),
        ("authorization { token: $2a$11$abc }", {"token": "$2a$11$abc"}),
        ("authorization { token: 'abc' }", {"token": "abc", "auth_timeout_s": 2.0}),
        ('authorization { timeout: "1.5s" }', {"auth_timeout_s": 1.5}),
        ("jetstream: enabled", {"jetstream": True}),
        ("jetstream: true", {"jetstream": True}),
        ("jetstream: disabled", {"jetstream": False}),
        ("jetstream { enabled: false }", {"jetstream": False}),
        ("jetstream {}", {"jetstream": True}),
        ('jetstream { max_memory_store: "1M", max_file_store: 2G }', {"max_memory_store": 1 << 20,
                                                                     "max_file_store": 2 * 10**9}),
        ("jetstream { sync_interval: always }", {"sync_interval": "always"}),
        ("jetstream { strict: true }", {"jetstream": True}),
        ("store_dir: /data", {"store_dir": "/data"}),
        ("cluster { host: 10.0.0.1, port: 6222 }", {"cluster_host": "10.0.0.1", "cluster_port": 6222}),
        ("cluster { port: 6222 }", {"cluster_host": "0.0.0.0", "cluster_port": 6222}),
        ("cluster { listen: -1 }", {"cluster_port": -1}),
        ("cluster { authorization { user: r, password: p } }", {"cluster_username": "r", "cluster_password": "p"}),
        ("cluster\n{\n  port: 6222;\n}", {"cluster_port": 6222}),
        ("lame_duck_duration: '1m'", {"lame_duck_duration_s": 60.0}),
        ("VAR = 5000\nport: $VAR", {"port": 5000}),
        ("x: 7\ncluster { port: $x }", {"cluster_port": 7}),
    ],
)
def test_config_values(tmp_path, text, attrs):
    o = load_config_file(conf(tmp_path, text))
    for k, v in attrs.items():
        assert getattr(o, k) == v, k


def test_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_NATS_PORT", "4999")
    monkeypatch.setenv("TEST_NATS_SIZE", "2MB")
    o = load_config_file(conf(tmp_path, "port: $TEST_NATS_PORT\nmax_payload: $TEST_NATS_SIZE"))
    assert (o.port, o.max_payload) == (4999, 2 << 20)


def test_include(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "auth.conf").write_text("authorization { user: u, password: p }\n")
    o = load_config_file(conf(tmp_path, "port: 4333\ninclude ./sub/auth.conf\n"))
    assert (o.port, o.username, o.password) == (4333, "u", "p")
    (tmp_path / "sub" / "c.conf").write_text("port: 7000\n")
    o = load_config_file(conf(tmp_path, "cluster {\n  include 'sub/c.conf'\n}\n", name="b.conf"))
    assert o.cluster_port == 7000


def test_block_strings_and_escapes():
    tree = parse_text('a: (\n  line one\n  line two\n)\nb: "t\\tx\\x41"\nc: \'raw\\n\'\nd: 127.0.0.1:80\n'
                      "e: 1.5\nf: 2020-01-02T03:04:05Z\ng: [1 , 2 ]\nh: -3K\n")
    assert tree["a"].value == "\n  line one\n  line two\n"
    assert tree["b"].value == "t\txA"
    assert tree["c"].value == "raw\\n"
    assert tree["d"].value == "127.0.0.1:80"
    assert tree["e"].value == 1.5
    assert tree["f"].value.year == 2020 and tree["f"].value.second == 5
    assert [i.value for i in tree["g"].value] == [1, 2]
    assert tree["h"].value == -3000


def test_unquoted_duration_is_a_size_like_nats_server(tmp_path, capsys):
    # "2m" unquoted is the integer 2,000,000: nats-server warns and reads it as seconds.
    o = load_config_file(conf(tmp_path, "ping_interval: 2m"))
    assert o.ping_interval_s == 2_000_000.0
    assert 'invalid use of field "ping_interval": ping_interval should be converted to a duration' in \
        capsys.readouterr().err


@pytest.mark.parametrize(
    "text,message",
    [
        ("port: 4333\n\nfoo: 1\n", 'test.conf:3:1: unknown field "foo"'),
        ('port = "abc"', "test.conf:1:0: interface conversion: interface {} is string, not int64"),
        # malformed text: nats-server's lexer reports the line only, and no file
        ("port 4222 extra", "Parse error on line 1: 'Expected a top-level value to end with a new line, comment or EOF, "
                            "but got 'e' instead.'"),
        ("{\n  port: 4222 extra\n}", "Parse error on line 2: 'Expected a block-level value to end with a new line, "
                                   "comment or EOF, but got 'e' instead.'"),
        ("port: 1\n  x = { \n", "Parse error on line 3: 'Unexpected EOF processing map.'"),
        ("max_payload: 3GB", "test.conf:1:0: max_payload value is too big"),
        ('ping_interval: "abc"', 'test.conf:1:0: error parsing ping_interval: time: invalid duration "abc"'),
        ('lame_duck_duration: "10s"', "test.conf:1:0: invalid lame_duck_duration of 10s, minimum is 30 seconds"),
        ("lame_duck_duration: 60", "test.conf:1:0: interface conversion: interface {} is int64, not string"),
        ('lame_duck_grace_period: "-1s"', "test.conf:1:0: invalid lame_duck_grace_period, needs to be positive"),
        ("authorization { user: a, token: b }", "test.conf:1:0: Cannot have a user/pass and token"),
        ("authorization { user: a\n  foo: 1 }", 'test.conf:2:3: unknown field "foo"'),
        ('tls { cert_file: "a" }', "test.conf:1:0: missing 'key_file' in TLS configuration"),
        ('tls { key_file: "a" }', "test.conf:1:0: missing 'cert_file' in TLS configuration"),
        ('tls { cert_file: "/nonexist/a.pem", key_file: "/nonexist/b.pem" }',
         "test.conf:1:0: error parsing X509 certificate/key pair: open /nonexist/a.pem: no such file or directory"),
        ("jetstream: maybe", "test.conf:1:0: Expected 'enabled' or 'disabled' for string value, got 'maybe'"),
        ('jetstream { max_mem: "1X" }', "test.conf:1:12: max_mem_store sizes defined as strings must end in K, M, G, T"),
        ("jetstream { max_mem: 1.5 }", "test.conf:1:12: max_mem_store must be int64 or string"),
        ('jetstream { store_dir: "/x" }\nstore_dir: "/y"', "test.conf:2:1: Duplicate 'store_dir' configuration"),
        ("jetstream { foo: 1 }", 'test.conf:1:12: unknown field "foo"'),
        ("jetstream { strict: false }", 'test.conf:1:12: field "strict" set to false is not supported by this server'),
        ("cluster { foo: 1 }", 'test.conf:1:10: unknown field "foo"'),
        ("cluster: 1", "test.conf:1:0: Expected map to define cluster, got int64"),
        ('cluster { name: "a b" }', "test.conf:1:10: cluster name cannot contain spaces"),
        ('server_name: "a b"', "test.conf:1:0: server name cannot contain spaces"),
        ("x = 1\ny = $x", 'test.conf:2:1: unknown field "y"'),
        ("y = $NOPE_NOT_SET_X", "variable reference for 'NOPE_NOT_SET_X' on line 1 can not be found"),
        ("include nothere.conf", "error parsing include file 'nothere.conf', open "),
        ('listen: "4333"', 'test.conf:1:0: could not parse address string "4333"'),
        ("listen: 127.0.0.1", 'test.conf:1:0: could not parse address string "127.0.0.1"'),
        ("http: localhost:abc", 'test.conf:1:0: could not parse port "abc"'),
        ('s = "a\\qb"', "Parse error on line 1: 'Invalid escape character 'q'."),
        ("k: .5", "Parse error on line 1: 'Floats must start with a digit'"),
        ("port:\n4222", "Parse error on line 2: 'Expected value but found new line'"),
        ("a: 1.\n", "Parse error on line 2: 'Floats must have a digit after the '.', but got '\\n' instead.'"),
        ("port: 99999999999999999999", "integer '99999999999999999999' is out of the range"),
        ("port", "config is invalid (test.conf:1:4)"),
        ("port:", "test.conf:1:0: interface conversion: interface {} is string, not int64"),
        ("cluster { routes: [ nats://a:1 nats://b:2 ] }",
         "Expected an array value terminator \",\" or an array terminator \"]\", but got 'n' instead."),
        ("pedantic: true", 'test.conf:1:0: unknown field "pedantic"'),
        ("accounts { A { users: [{user: a, password: b}] } }",
         'test.conf:1:0: field "accounts" is not supported by this server'),
        ("port: 1\nfoo: 2\nbar: 3", 'test.conf:2:1: unknown field "foo"\ntest.conf:3:1: unknown field "bar"'),
    ],
)
def test_config_errors(tmp_path, text, message):
    path = conf(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config_file(path)
    assert message.replace("test.conf", path) in str(ei.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="open /nonexistent/x.conf: no such file or directory"):
        parse_args(["-c", "/nonexistent/x.conf"])


def test_tls_block(tmp_path, certs):
    cert, key = certs
    o = load_config_file(conf(tmp_path, f"""
        tls {{
          cert_file: "{cert}"
          key_file: "{key}"
          ca_file: "{cert}"
          verify: true
          timeout: 3
        }}
    """))
    assert o.tls and (o.tls_cert, o.tls_key, o.tls_ca, o.tls_verify) == (cert, key, cert, True)
    assert (o.tls_timeout_s, o.auth_timeout_s) == (3.0, 4.0)
    with pytest.raises(ConfigError, match="expected 'verify' to be a boolean"):
        load_config_file(conf(tmp_path, f'tls {{ cert_file: "{cert}", key_file: "{key}", verify: 1 }}'))


# ------------------------------------------------------------ precedence and validation


def test_flags_override_file(tmp_path):
    path = conf(tmp_path, """
        port: 4333
        debug: true
        server_name: fromfile
        jetstream { store_dir: /from/file }
        cluster { name: c, listen: 127.0.0.1:6222, routes: [nats://a:1] }
    """)
    o = parse_args(["-c", path, "-p", "5555", "-D=false", "-sd", "/from/flag", "--routes", "nats://b:2"])
    assert (o.port, o.debug, o.server_name, o.store_dir) == (5555, False, "fromfile", "/from/flag")
    assert o.jetstream and o.routes == ["nats://b:2"] and o.cluster_port == 6222
    # flags before -c also win: the file is applied first, then every flag
    assert parse_args(["-p", "6666", "-c", path]).port == 6666
    assert parse_args(["-c", path]).port == 4333
    o = parse_args(["-c", path, "--cluster", "nats://0.0.0.0:7222"])
    assert (o.cluster_host, o.cluster_port) == ("0.0.0.0", 7222)
    assert parse_args(["-c", path, "--cluster", ""]).cluster_port == 0


def test_routes_flag_with_cluster_in_file(tmp_path):
    path = conf(tmp_path, "cluster { port: 6222 }")
    assert parse_args(["-c", path, "--routes", "nats://a:1"]).routes == ["nats://a:1"]


def test_check_config_flag(tmp_path, capsys):
    path = conf(tmp_path, 'port: 1\nVAR: "<a&b>"\nserver_name: $VAR\nauthorization { timeout: 1.5 }\n'
                          'cluster { port: 6222, routes: ["nats://a:1"], no_advertise: true }\n')
    with pytest.raises(SystemExit) as ei:
        parse_args(["-t", "-c", path])
    assert ei.value.code == 0
    err = capsys.readouterr().err
    assert err.startswith(f"nats-server: configuration file {path} is valid (sha256:")
    if NATS:  # the digest is nats-server's own
        r = subprocess.run([NATS, "-t", "-c", path], capture_output=True, text=True, timeout=20)
        if r.returncode == 0:
            assert r.stderr == err


def test_max_payload_over_max_pending(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config_file(conf(tmp_path, "max_payload: 100MB"))
    assert str(ei.value) == "max_payload (104857600) cannot be higher than max_pending (67108864)"
    with pytest.raises(ConfigError, match=r"max_payload \(10485760\) cannot be higher than max_pending \(1048576\)"):
        load_config_file(conf(tmp_path, "max_payload: 10MB\nmax_pending: 1MB"))
    assert load_config_file(conf(tmp_path, "max_payload: 64MB")).max_payload == 64 << 20


def test_lame_duck_grace_must_be_below_duration(tmp_path):
    with pytest.raises(ConfigError, match=r"lame duck grace period \(40s\) should be strictly lower than lame duck "
                                          r"duration \(30s\)"):
        load_config_file(conf(tmp_path, 'lame_duck_duration: "30s"\nlame_duck_grace_period: "40s"'))


def test_load_config_file_onto_existing_options(tmp_path):
    base = Options(port=1234, debug=True)
    o = load_config_file(conf(tmp_path, "trace: true"), base)
    assert o is base and (o.port, o.debug, o.trace) == (1234, True, True)


# ---------------------------------------------------------- against the real nats-server

CASES = [
    "port: 4333", 'port = "abc"', "foo { bar: 1 }", "listen: localhost:4333", "max_payload: 3GB",
    'lame_duck_duration: "10s"', "authorization { user: a\n  foo: 1 }", 'tls { cert_file: "a" }',
    "jetstream: maybe", 'jetstream { max_mem: "1X" }', "cluster { foo: 1 }", "x = 1\ny = $x",
    "VAR = 5\nport: $VAR", "{\n port: 4333\n}", "cluster {port: 6222,}", "port\n  4222",
    'server_name: "a b"', "authorization { token: x }\nhttp: 127.0.0.1:8222",
]


@pytest.mark.skipif(NATS is None, reason="nats-server not on PATH")
@pytest.mark.parametrize("text", CASES)
def test_same_verdict_and_wording_as_nats_server(tmp_path, text):
    path = conf(tmp_path, text)
    r = subprocess.run([NATS, "-t", "-c", path], capture_output=True, text=True, timeout=20)
    theirs = (r.stderr + r.stdout).strip().removeprefix("nats-server: ")
    try:
        load_config_file(path)
    except ConfigError as e:
        assert r.returncode != 0, f"nats-server accepts it: {theirs}"
        assert str(e) in theirs or theirs in str(e)
    else:
        assert r.returncode == 0 and "is valid" in theirs, theirs


@pytest.mark.parametrize(
    "url,message",
    [("nats://h", "address h: missing port in address"), ("h:1", "missing port in address"),
     ("://x", 'parse "://x": missing protocol scheme'), ("nats://h:abc", 'parse "nats://h:abc": invalid port ":abc"')],
)
def test_cluster_url_errors_as_nats_server(url, message):
    with pytest.raises(ConfigError) as ei:
        parse_args(["--cluster", url])
    assert message in str(ei.value)


def test_cluster_url_ipv6():
    o = parse_args(["--cluster", "nats://[::1]:6222"])
    assert (o.cluster_host, o.cluster_port) == ("::1", 6222)


def test_signal_flag(tmp_path):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        pidfile = tmp_path / "nats.pid"
        pidfile.write_text(str(proc.pid))
        with pytest.raises(SystemExit) as ei:
            parse_args(["-sl", f"term={pidfile}"])
        assert ei.value.code == 0
        assert proc.wait(timeout=10) == -15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(ConfigError, match="invalid pid: abc"):
        parse_args(["-sl", "stop=abc"])
    with pytest.raises(ConfigError, match=r"invalid signal parameters: \[2\]"):
        parse_args(["-sl", "stop=1=2"])


def test_check_config_makes_warnings_fatal(tmp_path, capsys):
    path = conf(tmp_path, "write_deadline: 2")
    assert parse_args(["-c", path]).write_deadline_s == 2.0  # a warning only
    assert "should be converted to a duration" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="write_deadline should be converted to a duration"):
        parse_args(["-t", "-c", path])


# ------------------------------------------------------------------------- properties

from hypothesis import given, strategies as st  # noqa: E402


@given(h=st.integers(0, 1000), m=st.integers(0, 59), s=st.integers(0, 59), ms=st.integers(0, 999))
def test_duration_components_add_up(h, m, s, ms):
    text = f"{h}h{m}m{s}s{ms}ms"
    assert parse_duration(text) == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)
    assert parse_duration("-" + text) == pytest.approx(-(h * 3600 + m * 60 + s + ms / 1000))


@given(n=st.integers(0, 10**6), letter=st.sampled_from("KMGTkmgt"), binary=st.sampled_from(["", "B", "iB", "i", "b"]))
def test_size_suffixes(n, letter, binary):
    power = "KMGT".index(letter.upper()) + 1
    expected = n * (1024**power if binary else 1000**power)
    assert parse_size(f"{n}{letter}{binary}") == expected


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_grammar_never_crashes(text):
    try:
        tree = parse_text(text, "fuzz.conf")
    except ConfParseError as e:
        assert str(e).startswith("fuzz.conf:") and e.line >= 1
    else:
        assert all(isinstance(k, str) and isinstance(v, Item) for k, v in tree.items())


@given(st.lists(st.text(alphabet="abcxyz-_", min_size=1, max_size=8), min_size=1, max_size=6, unique=True),
       st.lists(st.integers(-10**12, 10**12), min_size=6, max_size=6))
def test_grammar_round_trip(keys, values):
    text = "\n".join(f"{k}{sep}{v}" for k, v, sep in zip(keys, values, [": ", " = ", " ", ":", "=", "  "]))
    tree = parse_text(text)
    assert {k: i.value for k, i in tree.items()} == dict(zip(keys, values))


@given(st.text(alphabet=" \t\n{}[]()=:;,#/\"'\\$-.0123456789abkKmMx_eT", max_size=60))
def test_grammar_never_crashes_on_grammar_characters(text):
    try:
        tree = parse_text(text, "fuzz.conf")
    except ConfParseError as e:
        assert str(e).startswith("fuzz.conf:") and e.line >= 1
    else:
        assert all(isinstance(k, str) and isinstance(v, Item) for k, v in tree.items())


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(ConfParseError):
        parse_text("a: " + "[" * 5000, "deep.conf")


def test_include_cycle_is_an_error(tmp_path):
    (tmp_path / "a.conf").write_text("include b.conf\n")
    (tmp_path / "b.conf").write_text("include a.conf\n")
    with pytest.raises(ConfigError, match="include cycle detected"):
        load_config_file(str(tmp_path / "a.conf"))


def test_finalize_is_idempotent():
    from broker.config import finalize

    o = parse_args(["-p", "-1"])
    assert finalize(finalize(o)).port == 0
    assert finalize(parse_args(["-p", "0"])).port == 4222


def test_nats_server_tuning_keys_are_accepted(tmp_path, certs):
    cert, key = certs
    o = load_config_file(conf(tmp_path, f"""
        no_sys_acc: true
        server_name: tuned
        server_tags: ["az:1", "ssd"]
        max_closed_clients: 100
        disable_sublist_cache: true
        cluster {{ name: c, port: 6222, pool_size: 3, compression: s2_auto, connect_backoff: true }}
        jetstream {{ domain: hub, max_buffered_msgs: 1000, limits {{ max_ack_pending: 10 }} }}
        tls {{ cert_file: "{cert}", key_file: "{key}", cipher_suites: ["TLS_AES_128_GCM_SHA256"] }}
    """))
    assert o.cluster_port == 6222 and o.jetstream and o.tls


@pytest.mark.parametrize(
    "text,field",
    [("cluster { port: 1, tls { cert_file: a } }", "tls"), ('jetstream { encryption_key: "s3cr3t" }', "encryption_key"),
     ("authorization { users: [] }", "users"), ("gateway { name: a }", "gateway"),
     ("leafnodes { port: 7422 }", "leafnodes"), ("websocket { port: 80 }", "websocket"),
     ("system_account: SYS", "system_account"), ("no_auth_user: a", "no_auth_user")],
)
def test_missing_features_are_refused_not_ignored(tmp_path, text, field):
    with pytest.raises(ConfigError, match=f'field "{field}" is not supported by this server'):
        load_config_file(conf(tmp_path, text))


def test_unknown_tls_field_wording(tmp_path, certs):
    cert, key = certs
    with pytest.raises(ConfigError, match=r'error parsing tls config, unknown field \["nope"\]'):
        load_config_file(conf(tmp_path, f'tls {{ cert_file: "{cert}", key_file: "{key}", nope: 1 }}'))
