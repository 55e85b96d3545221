"""Command-line flags and the config file, as nats-server 2.15 reads them.

`parse_args(argv)` gives one `Options`; the config file named by -c is applied first and
the flags given on the command line then override it, as nats-server does.  After both,
`finalize` applies nats-server's baseline rules (port 0 -> 4222, port -1 -> 0 meaning
"a random port", monitoring host defaults to the client host, ...) and validates.

Port conventions in the final Options: `port` 0 means bind a random port (from `-p -1`);
`http_port` and `cluster_port` 0 mean off and -1 means a random port.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse

VERSION = "2.15.1"
MAX_PAYLOAD_MAX_SIZE = 8 * 1024 * 1024  # above this nats-server only warns


class ConfigError(Exception):
    """A bad flag or config file.  `usage` is True for flag-syntax errors, after which
    nats-server prints the message, then its usage text on stdout, and exits 0."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


class Options:
    """nats-server's options, with its defaults (see the module docstring for the ports).

    A plain class, not a dataclass: `dataclasses` (and the __init__ it would compile) is about
    0.2 MiB that a fresh core node would keep for nothing (tests/core/test_footprint.py)."""

    host: str = "0.0.0.0"; port: int = 4222  # noqa: E702
    server_name: str = ""  # empty -> the server fills in its id
    http_host: str = "0.0.0.0"; http_port: int = 0  # noqa: E702  0 = monitoring off
    config_file: str = ""
    username: str = ""; password: str = ""; token: str = ""  # noqa: E702
    debug: bool = False; trace: bool = False; log_file: str = ""  # noqa: E702
    tls: bool = False; tls_cert: str = ""; tls_key: str = ""; tls_verify: bool = False  # noqa: E702
    tls_ca: str = ""; tls_timeout_s: float = 2.0  # noqa: E702
    tls_handshake_first: bool = False  # tls { handshake_first: true }: TLS before INFO
    max_payload: int = 1048576; max_control_line: int = 4096; max_pending: int = 67108864  # noqa: E702
    max_connections: int = 65536; max_subscriptions: int = 0  # noqa: E702  -1 / 0: see nats-server
    ping_interval_s: float = 120.0; ping_max: int = 2  # noqa: E702
    auth_timeout_s: float = 2.0; write_deadline_s: float = 10.0  # noqa: E702
    lame_duck_duration_s: float = 120.0; lame_duck_grace_period_s: float = 10.0  # noqa: E702
    jetstream: bool = False; store_dir: str = ""  # noqa: E702
    max_memory_store: int = -1; max_file_store: int = -1  # noqa: E702
    sync_interval: str = "always"  # "always" or a Go duration such as "2m"
    cluster_name: str = ""; cluster_host: str = ""; cluster_port: int = 0  # noqa: E702
    routes: list[str]  # a fresh list per instance (__init__)
    cluster_advertise: str = ""; no_advertise: bool = False  # noqa: E702
    client_advertise: str = ""
    pedantic: bool = False
    # Further nats-server options, accepted so that its command lines and files work.
    trace_verbose: bool = False; logtime: bool = True; logtime_utc: bool = False  # noqa: E702
    syslog: bool = False; remote_syslog: str = ""; log_size_limit: int = 0  # noqa: E702
    max_traced_msg_len: int = 0; pid_file: str = ""; ports_file_dir: str = ""  # noqa: E702
    https_port: int = 0; prof_port: int = 0; http_base_path: str = "/"  # noqa: E702
    check_config: bool = False; config_digest: str = ""  # noqa: E702  -t; the file's sha256
    cluster_username: str = ""; cluster_password: str = ""; connect_retries: int = 0  # noqa: E702
    # Internal: which defaults were overridden, for the baseline rules.
    _http_host_set: bool = False
    _auth_timeout_set: bool = False
    _random_port: bool = False  # port 0 came from -1

    def __init__(self, **values) -> None:
        self.routes = []
        for name, value in values.items():
            if name != "routes" and not hasattr(Options, name):
                raise TypeError(f"Options() got an unexpected keyword argument {name!r}")
            setattr(self, name, value)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in Options.__annotations__ if not k.startswith("_"))
        return f"Options({shown})"


# --------------------------------------------------------------------- durations, sizes

_DUR_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
              "h": 3600 * 10**9}
_DUR_PART = re.compile(r"(\d*)(\.(\d*))?([^\d.]*)")


def _go_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds; ValueError worded as Go words it."""
    quoted = '"' + text + '"'
    s, neg = text, False
    if s and s[0] in "+-":
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0  # nanoseconds, as Go counts them
    while s:
        m = _DUR_PART.match(s)
        whole, frac, unit = m.group(1), m.group(3), m.group(4)
        if not whole and not frac:
            raise ValueError(f"time: invalid duration {quoted}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _DUR_UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration {quoted}')
        from decimal import Decimal  # only for durations in a config file or flag
        total += int(Decimal((whole or "0") + "." + (frac or "0")) * _DUR_UNITS[unit])
        s = s[m.end():]
    if total > 2**63 - 1:
        raise ValueError(f"time: invalid duration {quoted}")
    return (-total if neg else total) / 1e9


def parse_duration(text: str | int | float) -> float:
    """A Go duration ("2m", "1.5s", "500ms", "1h2m") or a bare number of seconds -> seconds.
    Raises ValueError with Go's wording for a malformed duration."""
    if isinstance(text, bool):
        raise ValueError(f"time: invalid duration \"{text}\"")
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", s):
        return float(s)
    return _go_duration(s)


def parse_size(value) -> int:
    """1024, "1MB", "64MiB", "1G", "1K" ... read as nats-server reads an unquoted size in a
    config file: K M G T P E are powers of 1000, and with B, I or IB powers of 1024."""
    from broker import confparse

    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    try:
        item = confparse.parse_text(f"v: {text}")["v"] if re.fullmatch(r"[-\w]+", text) else None
    except confparse.ConfParseError:
        item = None
    if item is None or not isinstance(item.value, int) or isinstance(item.value, bool):
        raise ValueError(f"invalid size {value!r}")
    return item.value


# --------------------------------------------------------------------------- the flags

# name -> (kind, action); aliases share an action.  Kinds: bool, int, str.
_FLAGS: dict[str, tuple[str, str]] = {}


def _flag(kind: str, action: str, *names: str) -> None:
    for n in names:
        _FLAGS[n] = (kind, action)


_flag("bool", "help", "h", "help")
_flag("bool", "version", "v", "version")
_flag("bool", "help_tls", "help_tls")
_flag("int", "port", "port", "p")
_flag("str", "server_name", "n", "name", "server_name")
_flag("str", "host", "addr", "a", "net")
_flag("str", "client_advertise", "client_advertise")
_flag("bool", "debug", "D", "debug")
_flag("bool", "trace", "V", "trace")
_flag("bool", "VV", "VV")
_flag("bool", "DV", "DV")
_flag("bool", "DVV", "DVV")
_flag("bool", "logtime", "T", "logtime")
_flag("bool", "logtime_utc", "logtime_utc")
_flag("str", "username", "user")
_flag("str", "password", "pass")
_flag("str", "token", "auth")
_flag("int", "http_port", "m", "http_port")
_flag("int", "https_port", "ms", "https_port")
_flag("str", "config_file", "c", "config")
_flag("bool", "check_config", "t")
_flag("str", "signal", "sl", "signal")
_flag("str", "pid_file", "P", "pid")
_flag("str", "ports_file_dir", "ports_file_dir")
_flag("str", "log_file", "l", "log")
_flag("int", "log_size_limit", "log_size_limit")
_flag("bool", "syslog", "s", "syslog")
_flag("str", "remote_syslog", "r", "remote_syslog")
_flag("int", "prof_port", "profile")
_flag("str", "routes", "routes")
_flag("str", "cluster", "cluster", "cluster_listen")
_flag("str", "cluster_advertise", "cluster_advertise")
_flag("bool", "no_advertise", "no_advertise")
_flag("int", "connect_retries", "connect_retries")
_flag("str", "cluster_name", "cluster_name")
_flag("bool", "tls", "tls")
_flag("bool", "tlsverify", "tlsverify")
_flag("str", "tlscert", "tlscert")
_flag("str", "tlskey", "tlskey")
_flag("str", "tlscacert", "tlscacert")
_flag("int", "max_traced_msg_len", "max_traced_msg_len")
_flag("bool", "jetstream", "js", "jetstream")
_flag("str", "store_dir", "sd", "store_dir")

_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_INT_RE = re.compile(r"[+-]?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|0[0-7_]*|[1-9][0-9_]*)")


def _go_int(text: str, bits: int = 64) -> int:
    """strconv.ParseInt(text, 0, bits); raises ValueError("parse error"/"value out of range")."""
    if not _INT_RE.fullmatch(text) or "__" in text or text.rstrip("_") != text:
        raise ValueError("parse error")
    body = text.lstrip("+-")
    neg = text.startswith("-")
    if len(body) > 1 and body[0] == "0" and body[1] not in "xXoObB":
        n = int(body[1:].replace("_", "") or "0", 8)
    else:
        try:
            n = int(body, 0)
        except ValueError:
            raise ValueError("parse error") from None
    n = -n if neg else n
    if not -(2 ** (bits - 1)) <= n < 2 ** (bits - 1):
        raise ValueError("value out of range")
    return n


def _scan_flags(argv: list[str]) -> tuple[list[tuple[str, str, object]], list[str]]:
    """Go's flag.Parse: returns [(name, action, value)] in order, and the leftover args."""
    seen: list[tuple[str, str, object]] = []
    args = list(argv)
    while args:
        s = args[0]
        if len(s) < 2 or s[0] != "-":
            break
        dashes = 1
        if s[1] == "-":
            dashes = 2
            if len(s) == 2:
                args.pop(0)
                break
        name = s[dashes:]
        if not name or name[0] in "-=":
            raise ConfigError(f"bad flag syntax: {s}", usage=True)
        args.pop(0)
        has_value, value = False, ""
        if "=" in name:
            name, value = name.split("=", 1)
            has_value = True
        if name not in _FLAGS:
            raise ConfigError(f"flag provided but not defined: -{name}", usage=True)
        kind, action = _FLAGS[name]
        if kind == "bool":
            if has_value:
                if value in _GO_TRUE:
                    parsed: object = True
                elif value in _GO_FALSE:
                    parsed = False
                else:
                    raise ConfigError(f'invalid boolean value "{value}" for -{name}: parse error', usage=True)
            else:
                parsed = True
        else:
            if not has_value:
                if not args:
                    raise ConfigError(f"flag needs an argument: -{name}", usage=True)
                value = args.pop(0)
            if kind == "int":
                try:
                    parsed = _go_int(value)
                except ValueError as e:
                    raise ConfigError(f'invalid value "{value}" for flag -{name}: {e}', usage=True) from None
            else:
                parsed = value
        seen.append((name, action, parsed))
    return seen, args


USAGE = """
Usage: nats-server [options]

Server Options:
    -a, --addr, --net <host>         Bind to host address (default: 0.0.0.0)
    -p, --port <port>                Use port for clients (default: 4222)
    -n, --name
        --server_name <server_name>  Server name (default: auto)
    -P, --pid <file>                 File to store PID
    -m, --http_port <port>           Use port for http monitoring
    -ms,--https_port <port>          Use port for https monitoring
    -c, --config <file>              Configuration file
    -t                               Test configuration and exit
    -sl,--signal <signal>[=<pid>]    Send signal to nats-server process (ldm, stop, quit, term, reopen, reload)
                                     <pid> can be either a PID (e.g. 1) or the path to a PID file (e.g. /var/run/nats-server.pid)
        --client_advertise <string>  Client URL to advertise to other servers
        --ports_file_dir <dir>       Creates a ports file in the specified directory (<executable_name>_<pid>.ports).

Logging Options:
    -l, --log <file>                 File to redirect log output
    -T, --logtime                    Timestamp log entries (default: true)
        --logtime_utc                Timestamps in UTC instead of local timezone (default: false)
    -s, --syslog                     Log to syslog or windows event log
    -r, --remote_syslog <addr>       Syslog server addr (udp://localhost:514)
    -D, --debug                      Enable debugging output
    -V, --trace                      Trace the raw protocol
    -VV                              Verbose trace (traces system account as well)
    -DV                              Debug and trace
    -DVV                             Debug and verbose trace (traces system account as well)
        --log_size_limit <limit>     Logfile size limit (default: auto)
        --max_traced_msg_len <len>   Maximum printable length for traced messages (default: unlimited)

JetStream Options:
    -js, --jetstream                 Enable JetStream functionality
    -sd, --store_dir <dir>           Set the storage directory

Authorization Options:
        --user <user>                User required for connections
        --pass <password>            Password required for connections
        --auth <token>               Authorization token required for connections

TLS Options:
        --tls                        Enable TLS, do not verify clients (default: false)
        --tlscert <file>             Server certificate file
        --tlskey <file>              Private key for server certificate
        --tlsverify                  Enable TLS, verify client certificates
        --tlscacert <file>           Client certificate CA for verification

Cluster Options:
        --routes <rurl-1, rurl-2>    Routes to solicit and connect
        --cluster <cluster-url>      Cluster URL for solicited routes
        --cluster_name <string>      Cluster Name, if not set one will be dynamically generated
        --no_advertise <bool>        Do not advertise known cluster information to clients
        --cluster_advertise <string> Cluster URL to advertise to other servers
        --connect_retries <number>   For implicit routes, number of connect retries
        --cluster_listen <url>       Cluster url from which members can solicit routes

Profiling Options:
        --profile <port>             Profiling HTTP port

Common Options:
    -h, --help                       Show this message
    -v, --version                    Show version
        --help_tls                   TLS help
"""

TLS_USAGE = """
TLS configuration is specified in the tls section of a configuration file:

e.g.

    tls {
        cert_file:      "./certs/server-cert.pem"
        key_file:       "./certs/server-key.pem"
        ca_file:        "./certs/ca.pem"
        verify:         true
        timeout:        2
    }
"""


def report_and_exit(err: ConfigError, exe: str = "nats-server") -> None:
    """Print a ConfigError from parse_args the way nats-server does, and exit."""
    if err.usage:
        print(str(err), file=sys.stderr)
        print(USAGE)
        sys.exit(0)
    print(f"{exe}: {err}", file=sys.stderr)
    sys.exit(1)


def _split_routes(text: str) -> list[str]:
    return [normalize_url(r) for r in text.split(",") if r.strip()]


def normalize_url(raw: str) -> str:
    """A route URL as nats-server keeps it: trimmed, scheme lower-cased."""
    u = raw.strip()
    parts = urllib.parse.urlsplit(u)
    if parts.scheme:
        u = parts.scheme.lower() + u[len(parts.scheme):]
    return u


def _cluster_from_url(opts: Options, text: str) -> None:
    """--cluster nats://[user:pass@]host:port (port may be -1 for random)."""
    if text == "":
        opts.cluster_port = 0
        return
    random = text.endswith(":-1")
    if random:
        text = text[:-3] + ":0"
    if text.startswith(":"):
        raise ConfigError(f'parse "{text}": missing protocol scheme')
    u = urllib.parse.urlsplit(text)
    netloc = u.netloc.rsplit("@", 1)[-1]
    host, sep, port_s = netloc.rpartition(":")
    if not netloc:
        raise ConfigError("missing port in address")
    if not sep or (":" in host and not host.endswith("]")):
        raise ConfigError(f"address {netloc}: missing port in address")
    if not port_s.isdigit():
        raise ConfigError(f'parse "{text}": invalid port ":{port_s}" after host')
    host, port = host.strip("[]"), int(port_s)
    opts.cluster_host = host or ""
    opts.cluster_port = -1 if random else port
    if u.username is not None:
        if u.password is None:
            raise ConfigError("expected cluster password to be set")
        opts.cluster_username = urllib.parse.unquote(u.username)
        opts.cluster_password = urllib.parse.unquote(u.password)
    else:
        opts.cluster_username = opts.cluster_password = ""


_SIMPLE = {
    "port", "server_name", "host", "client_advertise", "debug", "trace", "logtime", "logtime_utc",
    "username", "password", "token", "http_port", "https_port", "config_file", "check_config",
    "pid_file", "ports_file_dir", "log_file", "log_size_limit", "syslog", "remote_syslog",
    "prof_port", "cluster_advertise", "no_advertise", "connect_retries", "cluster_name",
    "max_traced_msg_len", "jetstream", "store_dir",
}


def _send_signal(spec: str) -> None:
    """-sl command[=pid|pidfile]: signal a running server and exit, as nats-server does."""
    import signal as sig

    cmd, _, pid = spec.partition("=")
    if "=" in pid:
        raise ConfigError(f"invalid signal parameters: [{' '.join(pid.split('=')[1:])}]")
    signum = {"stop": sig.SIGKILL, "quit": sig.SIGINT, "term": sig.SIGTERM, "reopen": sig.SIGUSR1,
              "reload": sig.SIGHUP, "ldm": sig.SIGUSR2}.get(cmd)
    if signum is None:
        raise ConfigError(f'unknown signal "{cmd}"')
    if not pid:
        raise ConfigError("no nats-server processes running")  # we do not search the process table
    if os.path.isfile(pid):
        with open(pid) as f:
            pid = f.read()
    if not pid.strip().isdigit():
        raise ConfigError(f"invalid pid: {pid}")
    try:
        os.kill(int(pid), signum)
    except OSError as e:
        raise ConfigError(str(e)) from None
    sys.exit(0)


def parse_args(argv: list[str]) -> Options:
    """nats-server's command line -> Options (config file first, then the flags)."""
    seen, rest = _scan_flags(argv)
    last = {action: value for _name, action, value in seen}
    if last.get("version"):
        print(f"nats-server: v{VERSION}")
        sys.exit(0)
    if last.get("help"):
        print(USAGE)
        sys.exit(0)
    if last.get("help_tls"):
        print(TLS_USAGE)
        sys.exit(0)
    if rest:
        cmd = rest[0].lower()
        if cmd == "version":
            print(f"nats-server: v{VERSION}")
            sys.exit(0)
        if cmd == "help":
            print(USAGE)
            sys.exit(0)
        raise ConfigError(f'unrecognized command: "{rest[0]}"')
    if last.get("signal"):
        _send_signal(str(last["signal"]))

    opts = Options()
    config_file = str(last.get("config_file", ""))
    if config_file:
        from broker import confapply

        confapply.apply_config_file(opts, config_file, strict=bool(last.get("check_config")))
        if last.get("check_config"):  # -t: report the file valid, as nats-server does, and stop
            print(f"nats-server: configuration file {config_file} is valid ({opts.config_digest})", file=sys.stderr)
            sys.exit(0)
    elif last.get("check_config"):
        raise ConfigError("must specify [-c, --config] option to check configuration file syntax")
    _apply_flags(opts, seen, last)
    finalize(opts)
    return opts


def _apply_flags(opts: Options, seen: list[tuple[str, str, object]], last: dict[str, object]) -> None:
    tls_flags: dict[str, object] = {}
    for _name, action, value in seen:
        if action in _SIMPLE:
            setattr(opts, action, value)
        elif action.startswith("tls"):
            tls_flags[action] = value
    # nats-server then visits the set flags in name order for the special cases.
    for action in sorted(a for a in last if a in ("DV", "DVV", "VV", "cluster", "routes")):
        value = last[action]
        if action == "VV":
            opts.trace = opts.trace_verbose = bool(value)
        elif action == "DV":
            opts.debug = opts.trace = bool(value)
        elif action == "DVV":
            opts.debug = opts.trace = opts.trace_verbose = bool(value)
        elif action == "cluster":
            _cluster_from_url(opts, str(value))
        elif action == "routes":
            opts.routes = _split_routes(str(value))
    if tls_flags:
        if tls_flags.get("tls") is False:
            opts.tls = False
        else:
            # Any -tls* flag rebuilds TLS from the flags alone (the file's tls block is dropped).
            cert, key = str(tls_flags.get("tlscert", "")), str(tls_flags.get("tlskey", ""))
            if not cert:
                raise ConfigError("TLS Server certificate must be present and valid")
            if not key:
                raise ConfigError("TLS Server private key must be present and valid")
            opts.tls, opts.tls_cert, opts.tls_key = True, cert, key
            opts.tls_ca = str(tls_flags.get("tlscacert", ""))
            opts.tls_verify = bool(tls_flags.get("tlsverify", False))
            err = check_tls_files(opts.tls_cert, opts.tls_key, opts.tls_ca)
            if err:
                raise ConfigError(err)
    if last.get("routes") and not (last.get("cluster") or opts.cluster_host or opts.cluster_port):
        raise ConfigError("solicited routes require cluster capabilities, e.g. --cluster")


def finalize(opts: Options) -> Options:
    """nats-server's baseline defaults and option validation."""
    if not opts.host:
        opts.host = "0.0.0.0"
    if not opts._http_host_set:
        opts.http_host = opts.host
    if opts.port == -1:
        opts.port, opts._random_port = 0, True
    elif opts.port == 0 and not opts._random_port:
        opts.port = 4222
    if opts.max_connections == 0:
        opts.max_connections = 65536
    if opts.ping_interval_s == 0:
        opts.ping_interval_s = 120.0
    if opts.ping_max == 0:
        opts.ping_max = 2
    if opts.tls_timeout_s == 0:
        opts.tls_timeout_s = 2.0
    if opts.auth_timeout_s == 0 or (opts.tls and not opts._auth_timeout_set and opts.auth_timeout_s == 2.0):
        opts.auth_timeout_s = opts.tls_timeout_s + 1.0 if opts.tls else 2.0
    if opts.cluster_port and not opts.cluster_host:
        opts.cluster_host = "0.0.0.0"
    for name in ("port", "http_port", "https_port", "cluster_port"):
        value = getattr(opts, name)
        if not -1 <= value <= 65535:
            raise ConfigError(f'{name} {value} out of range: must be between -1 and 65535')
    if opts.lame_duck_duration_s > 0 and opts.lame_duck_grace_period_s >= opts.lame_duck_duration_s:
        raise ConfigError(
            f"lame duck grace period ({_fmt_go_duration(opts.lame_duck_grace_period_s)}) should be strictly "
            f"lower than lame duck duration ({_fmt_go_duration(opts.lame_duck_duration_s)})")
    if opts.max_payload > opts.max_pending:
        raise ConfigError(f"max_payload ({opts.max_payload}) cannot be higher than max_pending ({opts.max_pending})")
    if " " in opts.server_name:
        raise ConfigError("server name cannot contain spaces")
    if opts.jetstream and opts.cluster_port:
        # as nats-server: clustered JetStream places streams by server name within one cluster
        if not opts.server_name:
            raise ConfigError("jetstream cluster requires `server_name` to be set")
        if not opts.cluster_name:
            raise ConfigError("jetstream cluster requires `cluster.name` to be set")
    return opts


def _fmt_go_duration(seconds: float) -> str:
    """Go's Duration.String() for the common cases (whole or fractional seconds)."""
    if seconds == 0:
        return "0s"
    neg, s = seconds < 0, abs(seconds)
    if s < 1:
        ms = s * 1000
        out = f"{ms:g}ms" if ms >= 1 else f"{s * 1e6:g}µs"
    else:
        h, rem = divmod(s, 3600)
        m, sec = divmod(rem, 60)
        sec_s = f"{sec:.9f}".rstrip("0").rstrip(".") + "s"
        out = (f"{int(h)}h{int(m)}m" if h else f"{int(m)}m" if m else "") + sec_s
    return "-" + out if neg else out


def load_config_file(path: str, opts: Options | None = None) -> Options:
    """Apply a nats-server config file onto `opts` (or fresh defaults), then validate."""
    from broker import confapply

    opts = opts if opts is not None else Options()
    confapply.apply_config_file(opts, path)
    return finalize(opts)


def check_tls_files(cert: str, key: str, ca: str = "") -> str:
    """Load the certificate, key and CA as nats-server does at startup; "" or its error."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for path in (cert, key):
        if not os.path.exists(path):
            return f"error parsing X509 certificate/key pair: open {path}: no such file or directory"
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        return f"error parsing X509 certificate/key pair: {e}"
    if ca:
        if not os.path.exists(ca):
            return f"open {ca}: no such file or directory"
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError):
            return "failed to parse root ca certificate"
    return ""
