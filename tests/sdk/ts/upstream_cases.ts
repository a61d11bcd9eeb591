// The behaviours of inngest-js's own dev-server tests (packages/inngest/src/test/functions/* and
// src/test/integration/*, inngest-js 4.x) that stepwise once failed, written as one app on the
// official SDK (4.x, Express 5): run by tests/sdk/test_ts_upstream_cases.py.
import express from "express";
import { Inngest, referenceFunction } from "inngest";
import { serve } from "inngest/express";

const inngest = new Inngest({ id: "js-cases" });
const seen: Record<string, number[]> = {};
const note = (key: string, attempt: number) => { (seen[key] ??= []).push(attempt); };

// handling-step-errors: a step's error keeps its `cause`, read by a later step.
const stepErrors = inngest.createFunction(
  { id: "handling-step-errors", retries: 1, triggers: [{ event: "js-cases/step-errors" }] },
  async ({ step }) => {
    try {
      await step.run("a", () => {
        throw new Error("Oh no!", { cause: new Error("This is the cause") });
      });
    } catch (err) {
      const cause = (err as Error).cause as Error | undefined;
      return step.run("b", () => ({ name: (err as Error).name, message: (err as Error).message,
                                    cause: cause?.message ?? null }));
    }
    return "a did not fail";
  },
);

// step-invoke: Promise.all of two invokes (one answer of two InvokeFunction opcodes), one of
// a function with only a cron trigger.
const childByEvent = inngest.createFunction(
  { id: "child-by-event", triggers: [{ event: "js-cases/child" }] },
  async ({ event }) => ({ by: "event", got: event.data.x ?? null }),
);
const childByCron = inngest.createFunction(
  { id: "child-by-cron", triggers: [{ cron: "0 0 1 1 *" }] },
  async () => ({ by: "cron" }),
);
const invokeBoth = inngest.createFunction(
  { id: "step-invoke", triggers: [{ event: "js-cases/invoke-both" }] },
  async ({ step }) => Promise.all([
    step.invoke("invoke-by-event", { function: childByEvent, data: { x: 1 } }),
    step.invoke("invoke-by-cron", { function: childByCron }),
  ]),
);

// step-invoke-not-found: Inngest's error for a function that does not exist.
const invokeMissing = inngest.createFunction(
  { id: "step-invoke-not-found", triggers: [{ event: "js-cases/invoke-missing" }] },
  async ({ step }) => {
    try {
      await step.invoke("missing", { function: referenceFunction({ functionId: "non-existant-fn" }) });
    } catch (err) {
      return { name: (err as Error).name, message: (err as Error).message };
    }
    return "invoked";
  },
);

// run-payload-wildcard-schema: a wildcard trigger; the run gets the real event name.
const wildcard = inngest.createFunction(
  { id: "wildcard", triggers: [{ event: "js-cases/wild/*" }] },
  async ({ event }) => ({ name: event.name }),
);

// retry.test: attempts count per step: a fails once, b keeps failing (retries: 1).
const retries = inngest.createFunction(
  { id: "retry-per-step", retries: 1, triggers: [{ event: "js-cases/retry" }] },
  async ({ step, attempt, runId }) => {
    await step.run("a", () => {
      note(`${runId}/a`, attempt);
      if (attempt === 0) throw new Error("a fails once");
      return "a";
    });
    try {
      await step.run("b", () => {
        note(`${runId}/b`, attempt);
        throw new Error("b keeps failing");
      });
    } catch {
      // b's error, after its last attempt
    }
    return { a: seen[`${runId}/a`], b: seen[`${runId}/b`] };
  },
);

// middleware/useCases/encoding, anyContext: ctx.requestId and ctx.jobId come from the
// executor's request headers.
const ids = inngest.createFunction(
  { id: "request-ids", triggers: [{ event: "js-cases/ids" }] },
  async ({ requestId, jobId, maxAttempts, event }) => ({
    requestId: typeof requestId, jobId: typeof jobId, maxAttempts, user: event.user ?? null }),
);

// sessions.test: ctx.sessions from the event's `meta.sessions`, propagated by the run's own
// send (the child's sessions: the parent's, and the one the send sets itself).
const sessions = inngest.createFunction(
  { id: "sessions", triggers: [{ event: "js-cases/sessions" }] },
  async ({ step, sessions: own }) => {
    await step.sendEvent("send-on", { name: "js-cases/sessions-child", data: {},
                                      meta: { sessions: { chat: "c1" } } });
    return own ?? null;
  },
);
const sessionsChild = inngest.createFunction(
  { id: "sessions-child", triggers: [{ event: "js-cases/sessions-child" }] },
  async ({ sessions: own }) => own ?? null,
);

const app = express();
app.use(express.json({ limit: "10mb" }));
app.use("/api/inngest", serve({ client: inngest, functions: [
  stepErrors, childByEvent, childByCron, invokeBoth, invokeMissing, wildcard, retries, ids,
  sessions, sessionsChild] }));
app.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("js-cases listening"));
