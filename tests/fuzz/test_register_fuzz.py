"""Generated SDK syncs (`POST /fn/register`) against a live `stepwise dev`, on SQLite and on
PostgreSQL: never a 5xx, whatever the body.

The bodies are built from the SDKs' own sync schemas (inngest-js `types.ts` FunctionConfig,
inngest-py's registration models, Inngest's `pkg/sdk` and `pkg/inngest` decoders): every shape
each field takes there (concurrency as a number, an object or a list; both SDKs' spellings of
the app's fields; fields a newer SDK may add), then mutated into what no SDK sends (wrong types,
nulls, control characters, huge numbers, unknown fields at any depth). The syncs the SDKs really
sent (`captured_syncs.json`: inngest-js 4.24 and inngest-py 0.5.19, dev and cloud mode, from
the shared captures) are mutated the same way. A refusal must be a 4xx whose JSON body has
`error` and `status` (the JS SDK reads the outcome from the body) and must change no stored
function; an accepted sync must store exactly its app's functions and leave every other app's
as they were, and the functions and apps listings readable.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1] / "acceptance"))
from procs import free_port, start, stop, wait_healthy

#: Examples per test; STEPWISE_FUZZ_EXAMPLES raises it for a longer local run.
EXAMPLES = int(os.environ.get("STEPWISE_FUZZ_EXAMPLES", "120"))

texts = st.text(max_size=12)
odd_texts = st.one_of(texts, st.sampled_from(["", " ", "a\x00b", "\ud800", "é☃️", "x" * 5000]))
durations = st.one_of(st.sampled_from(["1s", "500ms", "1m", "1h30m", "2d", "1w", "24h", "0s",
                                       "1.5h", "soon", "", "5", "-1s", "99999999999999w"]),
                      st.integers(1, 10**6).map(lambda n: f"{n}s"))
expressions = st.sampled_from(["event.data.id", "event.data.user.id == 'x'", "true",
                               "async.data.id == event.data.id", "event.data.", "(((", "1 +"])
numbers = st.one_of(st.integers(-5, 1000), st.sampled_from([0, 2**63, -(2**63), 10**30]),
                    st.floats(allow_nan=False, allow_infinity=False))
any_json = st.recursive(st.one_of(st.none(), st.booleans(), numbers, odd_texts),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(texts, inner, max_size=3)),
                        max_leaves=8)


def optional(**fields: Any) -> st.SearchStrategy[dict[str, Any]]:
    """An object of which each field is present or not."""
    return st.fixed_dictionaries({}, optional=fields)


limit_obj = optional(limit=numbers, key=expressions,
                     scope=st.sampled_from(["fn", "env", "account", "FN", "", "planet"]))
concurrency = st.one_of(numbers, limit_obj, st.lists(limit_obj, max_size=3), st.none(),
                        st.just([]))
trigger = st.one_of(
    optional(event=st.one_of(st.sampled_from(["shop/order.placed", "shop/*", "a.*", "*",
                                              "inngest/function.failed"]), odd_texts),
             expression=expressions),
    optional(cron=st.sampled_from(["* * * * *", "0 9 * * 1-5", "TZ=Europe/Paris 0 9 * * *",
                                   "CRON_TZ=Mars/Base 0 0 * * *", "@daily", "*/61 * * * *",
                                   "nonsense"]),
             jitter=durations))


@st.composite
def functions(draw: st.DrawFn, app: str, index: int) -> dict[str, Any]:
    fid = draw(st.one_of(st.just(f"{app}-fn-{index}"), odd_texts))
    url = f"http://127.0.0.1:9/api/inngest?fnId={fid}&stepId=step"
    retries = draw(st.one_of(st.none(), optional(attempts=numbers)))
    step: dict[str, Any] = {"id": "step", "name": "step",
                            "runtime": draw(st.one_of(st.just({"type": "http", "url": url}),
                                                      optional(type=odd_texts, url=odd_texts)))}
    if retries is not None:
        step["retries"] = retries
    function: dict[str, Any] = {"id": fid, "name": draw(texts), "steps": {"step": step},
                                "triggers": draw(st.lists(trigger, max_size=3))}
    function |= draw(optional(
        concurrency=concurrency,
        throttle=optional(limit=numbers, period=durations, burst=numbers, key=expressions),
        rateLimit=optional(limit=numbers, period=durations, key=expressions),
        debounce=optional(period=durations, key=expressions, timeout=durations),
        batchEvents=optional(maxSize=numbers, timeout=durations, key=expressions,
                             **{"if": expressions}),
        priority=optional(run=st.one_of(expressions, st.none())),
        cancel=st.lists(optional(event=odd_texts, timeout=durations,
                                 **{"if": expressions}), max_size=6),
        timeouts=optional(start=durations, finish=durations),
        idempotency=expressions,
        singleton=optional(key=expressions, mode=st.sampled_from(["skip", "cancel", "x"])),
        optimizeParallelism=st.booleans(), description=texts))
    return function


@st.composite
def sdk_syncs(draw: st.DrawFn) -> dict[str, Any]:
    """A sync as an SDK could send it (JS or Python spellings)."""
    app = draw(st.sampled_from(["fuzz-js", "fuzz-py"]))
    body: dict[str, Any] = {"url": "http://127.0.0.1:9/api/inngest", "v": "0.1",
                            "sdk": draw(st.sampled_from(["js:v4.24.0", "js:v3.54.2",
                                                         "py:v0.5.19"])),
                            "framework": draw(st.sampled_from(["express", "fast_api"])),
                            "capabilities": {"trust_probe": "v1", "connect": "v1"},
                            "functions": [draw(functions(app, i)) for i in
                                          range(draw(st.integers(0, 3)))]}
    if app == "fuzz-js":
        body |= {"appName": app, "deployType": "ping"}
    else:
        body |= {"appname": app, "deploy_type": "ping"}
    return body


#: The register bodies the SDKs sent (see the module's docstring).
CAPTURED = json.loads((Path(__file__).parent / "captured_syncs.json").read_text())
captured_syncs = st.sampled_from(sorted(CAPTURED)).map(lambda sdk: json.loads(json.dumps(
    CAPTURED[sdk])))


@st.composite
def mutated(draw: st.DrawFn, bodies: st.SearchStrategy[Any] | None = None) -> Any:
    """A sync with one value somewhere replaced by any JSON, or a field added."""
    body = draw(sdk_syncs() if bodies is None else bodies)
    path: list[Any] = []
    node: Any = body
    while isinstance(node, dict | list) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict)
                                   else list(range(len(node)))))
        path.append(key)
        node = node[key]
    if not path:
        return draw(st.one_of(any_json, st.just(body)))
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and draw(st.booleans()):
        parent[draw(texts)] = draw(any_json)
    else:
        parent[path[-1]] = draw(any_json)
    return body


def post(base: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(base + "/fn/register", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as answer:
        json.loads(answer.read())
        return int(answer.status)


def stored(base: str) -> dict[tuple[str, str], str]:
    """Every stored function, as (app, id) -> its listing as JSON, through every page."""
    functions: dict[tuple[str, str], str] = {}
    url: str | None = base + "/api/v1/functions?limit=1000"
    while url:
        with urllib.request.urlopen(url, timeout=30) as answer:
            page = json.loads(answer.read())
        for f in page["functions"]:
            functions[(f["app_id"], f["id"])] = json.dumps(f, sort_keys=True)
        url = base + page["next"] if page.get("next") else None
    return functions


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("register-fuzz")
    if request.param == "sqlite":
        db = str(tmp / "dev.db")
    else:
        from tests.conftest import POSTGRES_URL, postgres_or_skip

        postgres_or_skip()
        import psycopg

        db = POSTGRES_URL.rsplit("/", 1)[0] + "/register_fuzz_" + os.urandom(4).hex()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {db.rsplit('/', 1)[1]}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["dev", "--port", str(port), "--db", db], tmp)
    try:
        wait_healthy(base, proc)
        yield base
    finally:
        stop(proc)
        if request.param == "postgres":
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE {db.rsplit('/', 1)[1]} WITH (FORCE)")


def check(base: str, body: Any) -> None:
    before = stored(base)
    status, answer = post(base, json.dumps(body).encode())
    assert status < 500, (status, answer, body)
    after = stored(base)
    if status == 200:
        assert answer["ok"] is True
        assert get(base + "/api/v1/apps") == 200
        app = answer["app_id"]
        assert sorted(i for a, i in after if a == app) == sorted(
            f["id"] for f in body.get("functions") or []), (body, after)
        assert {k: v for k, v in after.items() if k[0] != app} == \
            {k: v for k, v in before.items() if k[0] != app}  # other apps untouched
    else:
        assert 400 <= status < 500 and isinstance(answer, dict), (status, answer)
        assert isinstance(answer["error"], str) and answer["status"] == status
        assert after == before, "a refused sync changed stored functions"


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=sdk_syncs())
def test_syncs_in_the_sdks_shapes_never_answer_5xx(server: str, body: dict[str, Any]) -> None:
    check(server, body)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=mutated())
def test_mutated_syncs_never_answer_5xx(server: str, body: Any) -> None:
    check(server, body)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.one_of(captured_syncs, mutated(captured_syncs)))
def test_the_sdks_captured_syncs_mutated_never_answer_5xx_nor_corrupt_functions(
        server: str, body: Any) -> None:
    check(server, body)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe",
                                 b'{"appName": "a", "url": "http://h", "functions": 5}'])
def test_unreadable_bodies_are_a_400_naming_what_is_wrong(server: str, raw: bytes) -> None:
    status, answer = post(server, raw)
    assert status == 400 and answer["status"] == 400 and answer["error"], answer


SIGNING_KEY = "signkey-prod-" + "4c" * 32
API_KEY, EVENT_KEY = "api-" + "f" * 40, "event-" + "f" * 40


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Any], str]]:
    """`stepwise server` with a signing key (on SQLite), which confirms every sync in-band,
    and a scripted app that answers with whatever `answers[0]` holds, signed."""
    from procs import ScriptedApp

    from stepwise import signing

    tmp = tmp_path_factory.mktemp("register-fuzz-cloud")
    answers: list[Any] = [None]

    def sync(call: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        raw = json.dumps(answers[0]).encode()
        return 200, {"X-Inngest-Sync-Kind": "in_band", "X-Inngest-Signature": signing.sign(
            raw, SIGNING_KEY, int(time.time()))}, answers[0]

    app = ScriptedApp(lambda call: (500, {}, {}), sync=sync)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["server", "--port", str(port), "--host", "127.0.0.1", "--db",
                  str(tmp / "cloud.db"), "--api-key", API_KEY, "--event-key", EVENT_KEY,
                  "--signing-key", SIGNING_KEY], tmp)
    try:
        wait_healthy(base, proc)
        yield base, answers, app.url
    finally:
        stop(proc)
        app.close()


def in_band_shape(body: Any) -> Any:
    """A register body as an SDK answers it in-band (`app_id`, its self-description)."""
    if not isinstance(body, dict):
        return body
    answer = {k: v for k, v in body.items() if k not in ("appName", "appname")}
    answer["app_id"] = body.get("appName", body.get("appname"))
    answer["inspection"] = {"authentication_succeeded": True, "function_count": 1}
    return answer


@settings(max_examples=max(EXAMPLES // 2, 10), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(answer=st.one_of(captured_syncs, mutated(captured_syncs), sdk_syncs(), mutated()
                        ).map(in_band_shape))
def test_in_band_answers_never_answer_5xx_nor_corrupt_functions(
        cloud: tuple[str, list[Any], str], answer: Any) -> None:
    """Outside dev mode what is stored is the app's signed in-band answer: generated answers
    (the SDKs' shapes and captured syncs, mutated) are read as carefully as posted syncs."""
    from stepwise import signing

    base, answers, url = cloud
    answers[0] = answer
    auth = {"Authorization": f"Bearer {API_KEY}"}

    def listed() -> dict[tuple[str, str], str]:
        request = urllib.request.Request(base + "/api/v1/functions?limit=1000", headers=auth)
        with urllib.request.urlopen(request, timeout=30) as got:
            return {(f["app_id"], f["id"]): json.dumps(f, sort_keys=True)
                    for f in json.loads(got.read())["functions"]}
    before = listed()
    request = urllib.request.Request(
        base + "/fn/register", json.dumps({"appName": "poster", "url": url}).encode(),
        method="POST", headers={"Content-Type": "application/json",
                                "Authorization": f"Bearer {signing.bearer(SIGNING_KEY)}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as got:
            status, reply = got.status, json.loads(got.read())
    except urllib.error.HTTPError as exc:
        status, reply = exc.code, json.loads(exc.read() or b"null")
    after = listed()
    assert status < 500, (status, reply, answer)
    if status == 200:
        app = reply["app_id"]
        assert app == answer["app_id"]
        assert sorted(i for a, i in after if a == app) == sorted(
            f["id"] for f in answer.get("functions") or [])
        assert {k: v for k, v in after.items() if k[0] != app} == \
            {k: v for k, v in before.items() if k[0] != app}
    else:
        assert 400 <= status < 500 and isinstance(reply, dict), (status, reply)
        assert isinstance(reply["error"], str) and reply["status"] == status
        assert after == before, "a refused sync changed stored functions"
