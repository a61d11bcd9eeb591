"""Functions served by apps written with Inngest's official SDKs, run over HTTP.

`registration` turns an SDK's `POST /fn/register` into stored function definitions (each with
the URL that runs it); `protocol` speaks the SDK's call protocol (request bodies, step memos,
opcodes to outcomes); `executor` holds `HttpExecutor`, the `Executor` that runs those
functions by calling their app (a `Worker` leases for it), and `RemoteApps`, one per app.
"""
