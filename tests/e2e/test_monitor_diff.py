"""Monitoring endpoints carry every top-level field nats-server's do (same names, same types)."""

import json
import urllib.request

import pytest

from tests.conftest import our_server, reference

PATHS = ["/varz", "/connz", "/subsz", "/routez", "/healthz", "/connz?subs=1", "/subsz?subs=1"]


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mon")
    ours = our_server(tmp, jetstream=False).start()
    ref = reference(tmp, jetstream=False).start()
    yield ours, ref
    ours.stop()
    ref.stop()


@pytest.mark.parametrize("path", PATHS)
def test_same_fields_as_nats_server(pair, path):
    ours, ref = pair
    want = get(ref.http_port, path)
    got = get(ours.http_port, path)
    missing = sorted(set(want) - set(got))
    assert not missing, f"{path} lacks {missing}"
    for key, value in want.items():
        if value is None:
            continue
        assert isinstance(got[key], type(value)) or (isinstance(value, (int, float)) and
                                                     isinstance(got[key], (int, float))), (path, key)
