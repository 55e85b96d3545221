"""Applying a parsed nats-server configuration file (broker/confparse.py) to `Options`:
`apply_config_file(opts, path)` with nats-server's key names, type checks, warnings and
error wording (`file:line:col: reason`)."""

from __future__ import annotations

import re
import sys
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from broker.config import ConfigError, _fmt_go_duration, _go_duration, check_tls_files, normalize_url
from broker.confparse import ConfParseError, Item, digest, parse_file


_GO_TYPES = {str: "string", int: "int64", float: "float64", bool: "bool", dict: "map[string]interface {}",
             list: "[]interface {}", datetime: "time.Time"}


def _go_type(v: Any) -> str:
    return _GO_TYPES.get(type(v), type(v).__name__)


class _Bad(Exception):
    """One configuration error, reported as nats-server does: `file:line:col: reason`."""

    def __init__(self, item: Item, reason: str) -> None:
        super().__init__(reason)
        self.item = item

    def render(self) -> str:
        return f"{self.item.where()}: {self}"


def _want(item: Item, typ: type) -> Any:
    v = item.value
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise _Bad(item, f"interface conversion: interface {{}} is {_go_type(v)}, not {_GO_TYPES[typ]}")
    return v


def _listen(item: Item) -> tuple[str, int]:
    """A port number or "host:port" ("[v6]:port")."""
    v = item.value
    if isinstance(v, int) and not isinstance(v, bool):
        return "", v
    if not isinstance(v, str):
        raise _Bad(item, f"expected port or host:port, got {_go_type(v)}")
    host, sep, port = v.rpartition(":")
    if not sep or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        raise _Bad(item, f'could not parse address string "{v}"')
    if not re.fullmatch(r"[+-]?\d+", port):
        raise _Bad(item, f'could not parse port "{port}"')
    return host.strip("[]"), int(port)


def _duration(key: str, item: Item, warnings: list[str]) -> float:
    """A Go duration string; a bare number is seconds, with nats-server's warning."""
    if isinstance(item.value, str):
        try:
            return _go_duration(item.value)
        except ValueError as e:
            raise _Bad(item, f"error parsing {key}: {e}") from None
    seconds = _want(item, int)
    warnings.append(f'{item.where()}: invalid use of field "{key}": {key} should be converted to a duration')
    return float(seconds)


def _timeout(key: str, item: Item, what: str, warnings: list[str] | None) -> float:
    """authorization/tls `timeout`: seconds as a number, or a duration string."""
    v = item.value
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        t = float(v)
    elif isinstance(v, str):
        try:
            t = _go_duration(v)
        except ValueError as e:
            raise _Bad(item, f"error parsing {what} config, 'timeout' {e}") from None
    else:
        raise _Bad(item, f"error parsing {what} config, 'timeout' wrong type")
    if warnings is not None and t > 60:
        warnings.append(
            f'{item.where()}: invalid use of field "{key}": timeout of {v} ({t:f} seconds) is high, consider '
            "keeping it under 60 seconds. possibly caused by unquoted duration; use '1m' instead of 1m, for example")
    return t


def _storage_size(item: Item, what: str) -> int:
    """JetStream limits: an integer (suffixes per the grammar) or a string "<n>K|M|G|T" (powers of 2)."""
    v = item.value
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if not isinstance(v, str):
        raise _Bad(item, f"{what} must be int64 or string")
    if v == "":
        return 0
    if not re.fullmatch(r"[+-]?\d+", v[:-1]):
        raise _Bad(item, f'{what} strconv.ParseInt: parsing "{v[:-1]}": invalid syntax')
    shift = {"K": 10, "M": 20, "G": 30, "T": 40}.get(v[-1])
    if shift is None:
        raise _Bad(item, f"{what} sizes defined as strings must end in K, M, G, T")
    return int(v[:-1]) << shift


# Keys nats-server knows that change nothing here (tuning of features this broker lacks),
# accepted and ignored; and features it lacks that matter (auth, TLS, storage encryption,
# other listeners), refused rather than silently ignored.
_IGNORED = {
    "top": {"trace_headers", "disable_sublist_cache", "no_sublist_cache", "logfile_max_num", "log_max_num",
            "prof_block_rate", "max_sub_tokens", "max_subscription_tokens", "no_system_account", "no_system",
            "no_sys_acc", "no_header_support", "connect_error_reports", "reconnect_error_reports", "server_tags",
            "server_metadata", "feature_flags", "no_fast_producer_stall", "max_closed_clients", "write_timeout"},
    "cluster": {"connect_backoff", "pool_size", "accounts", "compression", "ping_interval", "ping_max",
                "write_deadline", "write_timeout"},
    "jetstream": {"domain", "unique_tag", "max_outstanding_catchup", "max_buffered_size",
                  "max_buffered_msgs", "request_queue_limit", "info_queue_limit", "meta_compact",
                  "meta_compact_size", "meta_compact_sync", "max_concurrent_io", "extension_hint", "limits"},
    "tls": {"cipher_suites", "curve_preferences", "min_version", "allow_insecure_cipher_suites",
            "connection_rate_limit"},
}
_UNSUPPORTED = {
    "accounts", "users", "nkeys", "gateway", "leaf", "leafnodes", "websocket", "ws", "mqtt", "mappings", "maps",
    "operator", "operators", "roots", "root", "root_operators", "root_operator", "resolver", "account_resolver",
    "accounts_resolver", "resolver_tls", "resolver_preload", "resolver_pinned_accounts", "trusted", "trusted_keys",
    "system_account", "system", "no_auth_user", "auth_callout", "auth_hook", "proxy_required", "permissions",
    "default_permissions", "default_permission", "default_sentinel", "proxy_protocol", "proxies", "ocsp",
    "ocsp_cache", "allow_non_tls", "default_js_domain", "tls", "key", "ek", "encryption_key", "prev_key",
    "prev_ek", "prev_encryption_key", "cipher", "tpm", "insecure", "verify_and_map", "certs", "cert_store",
    "cert_match_by", "cert_match", "pinned_certs", "handshake_first", "first", "ocsp_peer",
    "verify_cert_and_check_known_urls",
}


def _unknown(key: str, item: Item, block: str = "") -> None:
    lk = key.lower()
    if lk in _IGNORED.get(block, ()):
        return
    if lk in _UNSUPPORTED:
        raise _Bad(item, f'field "{key}" is not supported by this server')
    if not item.used:  # a variable definition that was referenced is not an unknown field
        raise _Bad(item, f'unknown field "{key}"' if block != "tls" else
                   f'error parsing tls config, unknown field ["{key}"]')


def _simple(o: Any, table: dict[str, tuple[str, str]], key: str, item: Item, warnings: list[str]) -> bool:
    """Keys that map straight onto one attribute: kind is int, str, bool or dur."""
    spec = table.get(key.lower())
    if spec is None:
        return False
    kind, attr = spec
    if kind == "dur":
        setattr(o, attr, _duration(key.lower(), item, warnings))
    else:
        setattr(o, attr, _want(item, {"int": int, "str": str, "bool": bool}[kind]))
    return True


def _table(**kinds: str) -> dict[str, tuple[str, str]]:
    """_table(port="int", monitor_port="int:http_port") -> {key: (kind, attribute)}."""
    return {key: (spec.partition(":")[0], spec.partition(":")[2] or key) for key, spec in kinds.items()}


_TOP = _table(
    port="int", http_port="int", monitor_port="int:http_port", https_port="int", prof_port="int",
    max_pending="int", max_traced_msg_len="int", max_subscriptions="int", max_subs="int:max_subscriptions",
    ping_max="int", logfile_size_limit="int:log_size_limit", log_size_limit="int",
    client_advertise="str", host="str", net="str:host", logfile="str:log_file", log_file="str",
    remote_syslog="str", pidfile="str:pid_file", pid_file="str", ports_file_dir="str", http_base_path="str",
    debug="bool", trace="bool", logtime="bool", logtime_utc="bool", syslog="bool",
    ping_interval="dur:ping_interval_s", write_deadline="dur:write_deadline_s",
)
_AUTH = {**_table(user="str:username", username="str", password="str", token="str"), "pass": ("str", "password")}
_CLUSTER = _table(port="int:cluster_port", host="str:cluster_host", net="str:cluster_host",
                  advertise="str:cluster_advertise", cluster_advertise="str", no_advertise="bool",
                  connect_retries="int")


def _auth_block(o: Any, item: Item, warnings: list[str]) -> None:
    a = SimpleNamespace(username="", password="", token="", timeout=0.0)
    for k, it in _want(item, dict).items():
        if k.lower() == "timeout":
            a.timeout = _timeout(k, it, "authorization", warnings)
        elif not _simple(a, _AUTH, k, it, warnings):
            _unknown(k, it)
    if (a.username or a.password) and a.token:
        raise _Bad(item, "Cannot have a user/pass and token")
    o.username, o.password, o.token = a.username, a.password, a.token
    o.auth_timeout_s, o._auth_timeout_set = a.timeout, bool(a.timeout)


def _tls_block(o: Any, item: Item) -> None:
    files = {"cert_file": "", "key_file": "", "ca_file": ""}
    verify, timeout, first = False, 0.0, False
    for k, it in _want(item, dict).items():
        lk = k.lower()
        if lk in files:
            if not isinstance(it.value, str):
                raise _Bad(it, f"error parsing tls config, expected '{lk}' to be filename")
            files[lk] = it.value
        elif lk == "verify":
            if not isinstance(it.value, bool):
                raise _Bad(it, "error parsing tls config, expected 'verify' to be a boolean")
            verify = it.value
        elif lk == "timeout":
            timeout = _timeout(k, it, "tls", None)
        elif lk in ("handshake_first", "first") and isinstance(it.value, bool):
            first = it.value
        else:
            _unknown(k, it, "tls")
    cert, key, ca = files["cert_file"], files["key_file"], files["ca_file"]
    if not cert:
        raise _Bad(item, "missing 'cert_file' in TLS configuration")
    if not key:
        raise _Bad(item, "missing 'key_file' in TLS configuration")
    err = check_tls_files(cert, key, ca)
    if err:
        raise _Bad(item, err)
    o.tls, o.tls_cert, o.tls_key, o.tls_ca, o.tls_verify, o.tls_timeout_s = True, cert, key, ca, verify, timeout
    o.tls_handshake_first = first


def _jetstream_block(o: Any, item: Item, warnings: list[str]) -> None:
    v = item.value
    if isinstance(v, bool):
        o.jetstream = v
        return
    if isinstance(v, str):
        if v.lower() not in ("enabled", "enable", "disabled", "disable"):
            raise _Bad(item, f"Expected 'enabled' or 'disabled' for string value, got '{v}'")
        o.jetstream = v.lower().startswith("enable")
        return
    enable = True
    for k, it in _want(item, dict).items():
        lk = k.lower()
        if lk in ("store", "store_dir", "storedir"):
            if o.store_dir:
                raise _Bad(it, "Duplicate 'store_dir' configuration")
            o.store_dir = _want(it, str)
        elif lk in ("sync", "sync_interval"):
            if isinstance(it.value, str) and it.value.lower() == "always":
                o.sync_interval = "always"
            else:
                seconds = _duration(k, it, warnings)
                o.sync_interval = it.value if isinstance(it.value, str) else f"{seconds:g}s"
        elif lk in ("max_memory_store", "max_mem_store", "max_mem"):
            o.max_memory_store = _storage_size(it, "max_mem_store")
        elif lk in ("max_file_store", "max_file"):
            o.max_file_store = _storage_size(it, "max_file_store")
        elif lk in ("enable", "enabled"):
            enable = _want(it, bool)
        elif lk == "strict":
            if not _want(it, bool):  # the API always decodes requests strictly here
                raise _Bad(it, 'field "strict" set to false is not supported by this server')
        else:
            _unknown(k, it, "jetstream")
    o.jetstream = enable


def _cluster_block(o: Any, item: Item, warnings: list[str]) -> None:
    if not isinstance(item.value, dict):
        raise _Bad(item, f"Expected map to define cluster, got {_go_type(item.value)}")
    for k, it in item.value.items():
        lk = k.lower()
        if _simple(o, _CLUSTER, k, it, warnings):
            continue
        if lk == "name":
            if " " in _want(it, str):
                raise _Bad(it, "cluster name cannot contain spaces")
            o.cluster_name = it.value
        elif lk == "listen":
            o.cluster_host, o.cluster_port = _listen(it)
        elif lk == "routes":
            urls: list[str] = []
            for r in _want(it, list):
                u = normalize_url(_want(r, str))
                if u in urls:
                    warnings.append(f'{r.where()}: invalid use of field "{r.value}": Duplicate route entry detected')
                else:
                    urls.append(u)
            o.routes = urls
        elif lk == "authorization":
            a = SimpleNamespace(username="", password="", token="", _auth_timeout_set=False)
            _auth_block(a, it, warnings)
            if a.token:
                raise _Bad(it, "Cluster authorization does not support tokens")
            o.cluster_username, o.cluster_password = a.username, a.password
        else:
            _unknown(k, it, "cluster")


def _top_key(o: Any, k: str, item: Item, warnings: list[str]) -> None:
    lk = k.lower()
    if _simple(o, _TOP, k, item, warnings):
        return
    if lk == "trace_verbose":
        o.trace = o.trace_verbose = _want(item, bool)
    elif lk == "listen":
        o.host, o.port = _listen(item)
    elif lk in ("http", "https"):
        o.http_host, port = _listen(item)
        o._http_host_set = bool(o.http_host)
        setattr(o, f"{lk}_port", port)
    elif lk == "server_name":
        if " " in _want(item, str):
            raise _Bad(item, "server name cannot contain spaces")
        o.server_name = item.value
    elif lk in ("max_payload", "max_control_line"):
        if _want(item, int) > 2**31 - 1:
            raise _Bad(item, f"{k} value is too big")
        setattr(o, lk, item.value)
    elif lk in ("max_connections", "max_conn"):
        o.max_connections = _want(item, int) or -1  # nats-server: 0 refuses every client
    elif lk in ("lame_duck_duration", "lame_duck_grace_period"):
        try:
            d = _go_duration(_want(item, str))
        except ValueError as e:
            raise _Bad(item, f"error parsing {lk}: {e}") from None
        if lk == "lame_duck_duration" and d < 30:
            raise _Bad(item, f"invalid lame_duck_duration of {_fmt_go_duration(d)}, minimum is 30 seconds")
        if d < 0:
            raise _Bad(item, "invalid lame_duck_grace_period, needs to be positive")
        setattr(o, lk + "_s", d)
    elif lk == "authorization":
        _auth_block(o, item, warnings)
    elif lk == "tls":
        _tls_block(o, item)
    elif lk == "jetstream":
        _jetstream_block(o, item, warnings)
    elif lk in ("store_dir", "storedir"):
        if o.store_dir:
            raise _Bad(item, "Duplicate 'store_dir' configuration")
        o.store_dir = _want(item, str)
    elif lk == "cluster":
        _cluster_block(o, item, warnings)
    else:
        _unknown(k, item, "top")


def apply_config_file(opts: Any, path: str, strict: bool = False) -> None:
    """Apply a config file onto Options; ConfigError lists every problem, by line.  Warnings
    alone are printed to stderr and do not stop it, as in nats-server, unless `strict` (-t)."""
    opts.config_file = path
    try:
        tree = parse_file(path)
        opts.config_digest = digest(tree)
    except OSError as e:
        raise ConfigError(f"open {path}: {(e.strerror or str(e)).lower()}") from None
    except ConfParseError as e:
        raise ConfigError(e.render()) from None
    warnings: list[str] = [] if tree else [f"{path}: config has no values or is empty"]
    errors: list[_Bad] = []
    # jetstream before a top-level store_dir, so a duplicate is reported on the same line each time
    for k in sorted(tree, key=lambda key: (key.lower() != "jetstream", tree[key].line)):
        try:
            _top_key(opts, k, tree[k], warnings)
        except _Bad as e:
            errors.append(e)
    if errors or (warnings and strict):
        errors.sort(key=lambda e: (e.item.line, e.item.col))
        raise ConfigError("\n".join(warnings + [e.render() for e in errors]))
    if warnings:
        sys.stderr.write("".join(w + "\n" for w in warnings))
