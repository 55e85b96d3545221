"""This host's interface addresses, for the client URLs a server listening on every
interface advertises (INFO connect_urls), found as nats-server finds them; and opening a
listener that fails with nats-server's fatal startup text."""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from typing import Callable

import trio


class _Sockaddr(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_ubyte * 26)]


class _Ifaddrs(ctypes.Structure):
    pass


_Ifaddrs._fields_ = [("next", ctypes.POINTER(_Ifaddrs)), ("name", ctypes.c_char_p), ("flags", ctypes.c_uint),
                     ("addr", ctypes.POINTER(_Sockaddr)), ("netmask", ctypes.c_void_p),
                     ("ifu", ctypes.c_void_p), ("data", ctypes.c_void_p)]


def _interface_addrs() -> dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """Each interface's IPv4 and IPv6 addresses (getifaddrs(3)); empty where unavailable."""
    out: dict[str, list] = {}
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        head = ctypes.POINTER(_Ifaddrs)()
        if libc.getifaddrs(ctypes.byref(head)) != 0:
            return out
    except (OSError, AttributeError):
        return out
    try:
        p = head
        while p:
            ifa = p.contents
            if ifa.addr:
                fam, raw = ifa.addr.contents.family, bytes(ifa.addr.contents.data)
                name = (ifa.name or b"").decode(errors="replace")
                if fam == socket.AF_INET:
                    out.setdefault(name, []).append(ipaddress.IPv4Address(raw[2:6]))
                elif fam == socket.AF_INET6:
                    out.setdefault(name, []).append(ipaddress.IPv6Address(raw[6:22]))
            p = ifa.next
    finally:
        libc.freeifaddrs(head)
    return out


def local_ips() -> list[str]:
    """The addresses nats-server advertises when it listens on every interface: the global
    unicast ones (no loopback, link-local, multicast), interface by interface in index order,
    IPv4 before IPv6 within one, IPv6 in brackets."""
    by_name = _interface_addrs()
    try:
        order = [name for _, name in sorted(socket.if_nameindex())]
    except OSError:
        order = []
    order += [n for n in by_name if n not in order]
    ips: list[str] = []
    for name in order:
        addrs = sorted(by_name.get(name, []), key=lambda a: a.version)
        for a in addrs:
            if a.is_loopback or a.is_link_local or a.is_multicast or a.is_unspecified:
                continue
            text = f"[{a}]" if a.version == 6 else str(a)
            if text not in ips:
                ips.append(text)
    return ips


async def open_listeners(port: int, host: str, fatal: Callable[[str], str]) -> list:
    """trio listeners on host:port. When the port cannot be bound the OSError's text is
    `fatal(go_text)`, nats-server's FTL line around Go's listen error ("listen tcp
    127.0.0.1:4222: bind: address already in use"); `python -m broker` logs it and exits 1."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as e:
        go = f"listen tcp {host}:{port}: bind: {(e.strerror or str(e)).lower()}"
        raise OSError(e.errno, fatal(go)) from e
