"""What a consumer hands the runtime: `Out` frames and `Run`s of first deliveries (in
`Consumer.out`, see consumer.py), and `expand()` to turn Runs back into Outs. Its own module
so that consumer.py and the pull side in pullserve.py both use them without importing each
other; consumer.py re-exports all three."""

from __future__ import annotations

from typing import NamedTuple


class Out(NamedTuple):
    to: str  # the subject whose subscribers get it (deliver subject / request inbox)
    subject: str  # subject shown to the client (the stored message's subject, or `to` for status)
    reply: str
    hdr: bytes | None
    payload: bytes


_new_out = tuple.__new__  # Out without the namedtuple constructor's Python-level call


class Run(NamedTuple):
    """First deliveries of consecutive stream messages to one pull request, in one entry:
    msgs[i] goes to `to` with reply `{prefix}{seq}.{dseq + i}.{ts}.{pending - i}` (the
    ack subject of a first delivery; prefix ends with the deliver count `1.`). The runtime
    renders the frames straight from it, with no per-message Out or reply string."""
    to: str
    msgs: list
    prefix: str
    dseq: int
    pending: int

    def outs(self) -> list[Out]:
        p = self.prefix
        return [Out(self.to, m.subject, f"{p}{m.seq}.{self.dseq + i}.{m.ts}.{self.pending - i}", m.hdr, m.data)
                for i, m in enumerate(self.msgs)]


def expand(out: list) -> list[Out]:
    """`out` with every Run replaced by the Outs it stands for."""
    if not any(type(o) is Run for o in out):
        return out
    res: list[Out] = []
    for o in out:
        if type(o) is Run:
            res.extend(o.outs())
        else:
            res.append(o)
    return res
