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
from broker.confparse import ConfParseError, parse_text

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


def test_tls_flags():
    o = parse_args(["--tlscert", "c.pem", "--tlskey", "k.pem"])
    assert o.tls and (o.tls_cert, o.tls_key, o.tls_verify) == ("c.pem", "k.pem", False)
    o = parse_args(["--tlsverify", "--tlscert=c", "--tlskey=k", "--tlscacert=ca"])
    assert o.tls and o.tls_verify and o.tls_ca == "ca"
    assert o.auth_timeout_s == 3.0  # tls timeout + 1, as nats-server
    with pytest.raises(ConfigError, match="TLS Server certificate must be present and valid"):
        parse_args(["--tls"])
    with pytest.raises(ConfigError, match="TLS Server private key must be present and valid"):
        parse_args(["--tls", "--tlscert", "c"])
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
