"""What a JetStream node reports: usage and reservations, account info, /varz and /jsz
blocks, /healthz. A part of `JetStream` (manager.py), split out by concern."""

from __future__ import annotations

import os
import time

from broker.jetstream import api, streamapi


class JetStreamMonitor:
    def usage(self) -> tuple[int, int, int, int, int]:
        """(memory bytes, file bytes, streams, consumers, messages)."""
        mem = disk = msgs = cons = 0
        for stream in self.streams.values():
            st = stream.store.state()
            msgs += st.messages
            if stream.config.storage == "memory":
                mem += st.bytes
            else:
                disk += st.bytes
            cons += self.consumers.consumer_count(stream.name)
        return mem, disk, len(self.streams), cons, msgs

    def reserved(self) -> tuple[int, int]:
        """Bytes reserved by streams with max_bytes set: (memory, file)."""
        mem = disk = 0
        for stream in self.streams.values():
            if stream.config.max_bytes > 0:
                if stream.config.storage == "memory":
                    mem += stream.config.max_bytes
                else:
                    disk += stream.config.max_bytes
        return mem, disk

    def account_info(self) -> api.AccountInfoResponse:
        mem, disk, nstreams, ncons, _ = self.usage()
        rmem, rdisk = self.reserved()
        return api.AccountInfoResponse(memory=mem, storage=disk, reserved_memory=rmem, reserved_storage=rdisk,
                                       streams=nstreams, consumers=ncons,
                                       api=api.ApiStats(total=self.api_total, errors=self.api_errors))

    def _config_block(self) -> dict:
        return {"max_memory": self.max_memory if self.max_memory > 0 else _default_max_memory(),
                "max_storage": self.max_storage if self.max_storage > 0 else _default_max_storage(self.store_dir),
                "store_dir": self.jetstream_dir,
                "sync_interval": self.sync_interval_ns, "strict": True}

    def varz(self) -> dict:
        mem, disk, _, _, _ = self.usage()
        rmem, rdisk = self.reserved()
        stats = {"memory": mem, "storage": disk, "reserved_memory": rmem, "reserved_storage": rdisk,
                 "accounts": 1, "ha_assets": 0,
                 "api": {"level": api.API_LEVEL, "total": self.api_total, "errors": self.api_errors}}
        return {"config": self._config_block(), "stats": stats, "limits": {"default_max_consumers": 1000}}

    def jsz(self, query: dict) -> dict:
        mem, disk, nstreams, ncons, msgs = self.usage()
        rmem, rdisk = self.reserved()
        out = {"memory": mem, "storage": disk, "reserved_memory": rmem, "reserved_storage": rdisk,
               "accounts": 1, "ha_assets": 0,
               "api": {"level": api.API_LEVEL, "total": self.api_total, "errors": self.api_errors},
               "server_id": self.server.server_id, "now": api.rfc3339(time.time_ns()),
               "config": self._config_block(), "limits": {"default_max_consumers": 1000},
               "streams": nstreams, "consumers": ncons, "messages": msgs, "bytes": mem + disk}
        if self.cluster is not None:
            out["meta_cluster"] = self.cluster.meta_cluster()
        if _truthy(query.get("accounts")) or _truthy(query.get("streams")):
            out["account_details"] = [streamapi.account_detail(self, query)]
        return out

    def healthz(self) -> str | None:
        if self.write_error is not None:
            return self.write_error
        return self.load_errors[0] if self.load_errors else None


def _truthy(value) -> bool:
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value).lower() in ("1", "true", "yes")


def _default_max_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 3 // 4
    except (ValueError, OSError):
        return 1 << 30


def _default_max_storage(path: str) -> int:
    try:
        os.makedirs(path, exist_ok=True)
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize * 3 // 4
    except OSError:
        return 1 << 40
