"""Functions served by apps written with Inngest's official SDKs, run over HTTP.

`registration` turns an SDK's `POST /fn/register` into stored function definitions (each with
the URL that runs it); `protocol` speaks the SDK's call protocol (request bodies, step memos,
opcodes to outcomes); `executor` is the worker that leases runs of those functions and calls
their app.
"""
