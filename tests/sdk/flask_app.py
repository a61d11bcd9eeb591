"""A second SDK app, served by Flask with synchronous handlers: functions that the FastAPI app
(`py_app.py`) and a Python-native app (`native_app.py`) invoke across apps, and one more
function triggered by the same signup event."""

from __future__ import annotations

from typing import Any

import flask
import inngest
import inngest.flask

client = inngest.Inngest(app_id="py-mailer", is_production=False)


@client.create_function(fn_id="render-receipt", trigger=inngest.TriggerEvent(event="mail.render"))
def render_receipt(ctx: inngest.ContextSync) -> dict[str, Any]:
    lines = ctx.step.run("format", lambda: [f"{k}: {v}" for k, v in
                                            sorted(ctx.event.data["items"].items())])
    return {"receipt": "\n".join(lines), "source": ctx.event.data["_inngest"]["source_fn_id"]}


@client.create_function(fn_id="welcome", trigger=inngest.TriggerEvent(event="user.signup"))
def welcome(ctx: inngest.ContextSync) -> str:
    return ctx.step.run("compose", lambda: f"welcome user {ctx.event.data['user_id']}")


app = flask.Flask(__name__)
inngest.flask.serve(app, client, [render_receipt, welcome])
