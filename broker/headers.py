"""NATS message headers: the `NATS/1.0` block carried by HPUB/HMSG.

A header block is raw bytes: `NATS/1.0[ <status>[ <description>]]\r\n`, then
`Name: value\r\n` lines, then an empty line. Names keep their case and may repeat.
The broker moves header blocks around as opaque bytes; only JetStream and status
messages need to look inside, so parsing is on demand.
"""

from __future__ import annotations

PREFIX = b"NATS/1.0"
EMPTY = b"NATS/1.0\r\n\r\n"


def parse(block: bytes | None) -> tuple[str, str, list[tuple[str, str]]]:
    """Return (status, description, [(name, value), ...]) of a header block."""
    if not block:
        return "", "", []
    text = block.decode("utf-8", "replace")
    lines = text.split("\r\n")
    first = lines[0]
    status = desc = ""
    if first.startswith("NATS/1.0"):
        rest = first[8:].strip()
        if rest:
            status, _, desc = rest.partition(" ")
    items: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if sep:
            items.append((name.strip(), value.strip()))
    return status, desc.strip(), items


def get(block: bytes | None, name: str) -> str | None:
    """First value of header `name` (exact case, as nats-server compares), or None."""
    if not block:
        return None
    key = name.encode() + b":"
    start = block.find(b"\r\n" + key)
    if start < 0:
        return None
    start += 2 + len(key)
    end = block.find(b"\r\n", start)
    return block[start:end].decode("utf-8", "replace").strip()


def to_dict(block: bytes | None) -> dict[str, str]:
    """Header names to their last value (enough for JetStream's single-valued headers)."""
    return {k: v for k, v in parse(block)[2]}


def build(items: list[tuple[str, str]] | dict[str, str] | None = None, status: str = "",
          description: str = "") -> bytes:
    """Encode a header block; `status` gives a status line such as `503` or `404 No Messages`."""
    first = "NATS/1.0"
    if status:
        first += " " + status
        if description:
            first += " " + description
    pairs = items.items() if isinstance(items, dict) else (items or [])
    body = "".join(f"{k}: {v}\r\n" for k, v in pairs)
    return (first + "\r\n" + body + "\r\n").encode()


def remove(block: bytes | None, names: set[str]) -> bytes | None:
    """Drop headers named in `names`; returns None when nothing but an empty block is left."""
    status, desc, items = parse(block)
    kept = [(k, v) for k, v in items if k not in names]
    if not kept and not status:
        return None
    return build(kept, status, desc)
