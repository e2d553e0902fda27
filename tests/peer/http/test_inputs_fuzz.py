"""Every JSON endpoint, through its real app, fuzzed with hypothesis: valid bodies with a field
replaced by any JSON value (deeply nested too), fields dropped or added, the bytes cut or flipped,
random bytes. Whatever comes, the answer is a JSON object with a 2xx/4xx status (a 400 names its
field, as peer/http/inputs.py promises), never a 500, never an echo of a huge input, and the
exchange's core still holds its invariants. The table of known bad inputs is tests/peer/http/
test_inputs.py; this finds what the table did not think of."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.peer.http.test_inputs import ENDPOINTS, running

BODY_ENDPOINTS = [e for e in ENDPOINTS if e.body is not None and e.api != "exchange-direct"]
STATUSES = {200, 201, 400, 404, 409}

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=30,
)


def nested(depth: int) -> object:
    value: object = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


@st.composite
def mutated_bodies(draw, endpoint) -> bytes:
    fields = dict(endpoint.fields)
    how = draw(st.sampled_from(["replace", "drop_add", "bytes", "random", "deep"]))
    if how == "replace":
        name = draw(st.sampled_from(sorted(fields)))
        return json.dumps(endpoint.with_field(name, draw(json_values))).encode()
    if how == "deep":
        name = draw(st.sampled_from(sorted(fields)))
        return json.dumps(endpoint.with_field(name, nested(draw(st.integers(20, 200))))).encode()
    if how == "drop_add":
        drop = draw(st.sets(st.sampled_from(sorted(fields)), max_size=3))
        extra = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=2))
        body = {**{k: v for k, v in fields.items() if k not in drop}, **extra}
        return json.dumps({"fills": [body]} if endpoint.where else body).encode()
    if how == "bytes":
        raw = bytearray(json.dumps(endpoint.body).encode())
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(raw) - 1))
            raw[at] = draw(st.integers(0, 255))
        return bytes(raw[: draw(st.integers(0, len(raw)))])
    return draw(st.binary(max_size=300))


requests = st.lists(st.sampled_from(BODY_ENDPOINTS).flatmap(lambda e: st.tuples(st.just(e), mutated_bodies(e))),
                    min_size=1, max_size=6)


def send_all(api: str, batch) -> list[tuple[object, int, bytes]]:
    async def main():
        out = []
        with tempfile.TemporaryDirectory() as tmp:
            async with running(api, Path(tmp)) as target:
                for endpoint, body in batch:
                    status, content_type, content = await target.send(endpoint, body)
                    assert content_type == "application/json", (endpoint.path, status)
                    out.append((endpoint, status, content))
                if api == "exchange":
                    core = target.service.core
                    core.check_invariants(target.service.clock())
        return out

    return trio.run(main)


def check(answers) -> None:
    for endpoint, status, content in answers:
        assert status in STATUSES, (endpoint.method, endpoint.path, status, content[:300])
        answer = json.loads(content)
        assert isinstance(answer, dict)
        assert len(content) < 20_000  # a huge input is never echoed back
        if status == 400:
            assert set(answer) == {"error", "field"} and answer["error"].startswith(answer["field"]), answer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=requests.map(lambda b: [(e, body) for e, body in b if e.api == "exchange"]).filter(bool))
def test_the_exchanges_json_endpoints_answer_any_mutated_body_with_a_json_4xx_or_success(batch):
    check(send_all("exchange", batch))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=requests.map(lambda b: [(e, body) for e, body in b if e.api == "ledger"]).filter(bool))
def test_the_ledgers_json_endpoints_answer_any_mutated_body_with_a_json_4xx_or_success(batch):
    check(send_all("ledger", batch))
