"""JSON nulls in JetStream API requests mean "not set", as Go's decoder makes them."""

import asyncio
import json

import nats
import pytest

from tests.conftest import our_server, reference


@pytest.fixture(params=["ours", "nats-server"])
def server(request, tmp_path):
    srv = (our_server if request.param == "ours" else reference)(tmp_path).start()
    yield srv
    srv.stop()


def test_null_fields_are_ignored(server):
    async def main():
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="NUL", subjects=["nul.>"])
        await js.publish("nul.a", b"one")

        async def api(subject, body):
            msg = await nc.request(f"$JS.API.{subject}", json.dumps(body).encode(), timeout=5)
            return json.loads(msg.data)

        info = await api("STREAM.INFO.NUL", {"subjects_filter": None, "deleted_details": None, "offset": None})
        names = await api("STREAM.NAMES", {"subject": None, "offset": None})
        got = await api("STREAM.MSG.GET.NUL", {"seq": 1, "last_by_subj": None})
        await nc.close()
        return info, names, got
    info, names, got = asyncio.run(asyncio.wait_for(main(), 30))
    assert "error" not in info and info["state"]["messages"] == 1
    assert names["streams"] == ["NUL"]
    assert "error" not in got and got["message"]["seq"] == 1 and got["message"]["subject"] == "nul.a"
