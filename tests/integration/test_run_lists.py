"""Run lists never show a failed run with a blank error: an error over the list's preview
(1 KiB of JSON) is left out of `GET /api/v1/runs`, and its first line (`error_title`) is
listed instead, read from the prefix the list query returns; `stepwise runs` shows it."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

import stepwise
from stepwise import cli
from stepwise.payloads import dumps
from stepwise.server.convert import error_title
from stepwise.server.models import ERROR_TITLE_CHARS
from stepwise.testing import Harness

#: A 3,000-character message, with a quote and a non-ASCII character for the JSON escapes.
LONG = 'ledger said "no" → batch 7 refused: ' + "0123456789" * 297


def make_app() -> stepwise.App:
    app = stepwise.App("lists")

    def post(message: str) -> None:
        raise stepwise.NonRetriableError(message)

    @app.function(id="post-ledger", trigger=stepwise.on_event("ledger.post"), retries=0)
    async def post_ledger(ctx: stepwise.Context) -> Any:
        return await ctx.step.run("post", post, ctx.event.data["message"])

    return app


async def test_a_failed_run_whose_error_is_over_the_preview_is_listed_with_its_title(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(LONG) == 3006
    async with Harness(make_app(), db) as h:
        long_id = await h.send("ledger.post", {"message": LONG})
        short_id = await h.send("ledger.post", {"message": "ledger closed\nfor the night"})
        await h.settle()
        listed = {r["event_id"]: r for r in await h.runs(status="failed")}
        long, short = listed[long_id], listed[short_id]
        assert long["error"] is None and long["error_truncated"] is True
        expected = 'NonRetriableError: ledger said "no" → batch 7 refused: 0123456789'
        assert long["error_title"].startswith(expected)
        assert len(long["error_title"]) == ERROR_TITLE_CHARS and long["error_title"].endswith("…")
        assert short["error_truncated"] is False and short["error"]["name"] == \
            "NonRetriableError"
        assert short["error_title"] == "NonRetriableError: ledger closed"
        whole = await h.run(long["id"])
        assert whole["error"]["message"] == LONG and whole["error_title"] == long["error_title"]

        answer = (await h.http.get("/api/v1/runs", params={"status": "failed"})).json()
        monkeypatch.setattr(cli, "_call", lambda *args, **kwargs: answer)
        table = CliRunner().invoke(cli.main, ["runs", "--status", "failed"])
        assert table.exit_code == 0, table.output
        rows = {line.split()[0]: line for line in table.output.splitlines()[1:]}
        assert expected in rows[long["id"]]
        assert rows[short["id"]].endswith("ledger closed")


@pytest.mark.parametrize(("stored", "title"), [
    # Cut inside the message, inside an escape, inside a surrogate pair's escape.
    ('{"name":"KeyError","message":"missing \\"sku', 'KeyError: missing "sku'),
    ('{"name":"KeyError","message":"missing \\u00', "KeyError: missing"),
    ('{"name":"E","message":"ok \\ud83d\\ude00 \\ud83d\\ude', "E: ok \U0001f600"),
    ('{"name":"E","message":"ab\\', "E: ab"),
    # Cut inside the name; before anything useful.
    ('{"name":"Runtime', "Runtime"), ('{"na', None), ("", None),
    # Another key order, a nested error's name and message never taken for the run's.
    ('{"cause":{"name":"Inner","message":"deep"},"message":"outer","name":"Error"}',
     "Error: outer"),
    ('{"stack":"Traceback ...","name":"Error","message":"late"}', "Error: late"),
    ('{"cause":{"name":"Inner","message":"de', None),
    # Not an object: a bare string is its own title; other values have none.
    ('"plain failure\\nsecond line"', "plain failure"), ("42", None), ("[1,2]", None),
])
def test_error_title_reads_a_cut_error(stored: str, title: str | None) -> None:
    assert error_title(stored) == title


def test_error_title_of_every_prefix_of_a_stored_error_is_a_prefix_of_the_whole() -> None:
    text = dumps({"name": "ValueError", "message": 'a "quoted" \\ path →\ttab ✓ ' * 5,
                  "stack": "Traceback\n"}, "error")
    whole = error_title(text)
    assert whole is not None and whole.startswith('ValueError: a "quoted" \\ path →\ttab ✓')
    for cut in range(len(text)):
        title = error_title(text[:cut])
        assert title is None or whole.startswith(title.removesuffix("…")), (cut, title)
