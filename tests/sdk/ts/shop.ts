// An app written with Inngest's official TypeScript SDK (4.x) on Express 5, unchanged: stepwise
// runs its functions over HTTP. INNGEST_DEV (dev mode) or INNGEST_BASE_URL with
// INNGEST_SIGNING_KEY (cloud mode) point it at stepwise; PORT is where it listens.
import express from "express";
import { Inngest, NonRetriableError, referenceFunction } from "inngest";
import { serve } from "inngest/express";

const inngest = new Inngest({ id: "ts-shop" });

// What ran, for the tests: executions per run and step, and the export job's time spans.
const executions: Record<string, number> = {};
const spans: Record<string, Array<[number, number]>> = {};
const attempts: Record<string, number> = {};
const ran = (runId: string, stepId: string) => {
  const key = `${runId}/${stepId}`;
  executions[key] = (executions[key] ?? 0) + 1;
};
const pause = (ms: number) => new Promise((done) => setTimeout(done, ms));

const signup = inngest.createFunction(
  { id: "signup", retries: 3, triggers: [{ event: "user.signup" }] },
  async ({ event, step }) => {
    const user = await step.run("load-user", async () => ({
      id: event.data.user_id, email: `user${event.data.user_id}@example.com` }));
    const subscribed = await step.run("subscribe", async () => {
      attempts[user.email] = (attempts[user.email] ?? 0) + 1;
      if (attempts[user.email] <= 2) {
        throw new Error(`mailing-list API timed out (attempt ${attempts[user.email]})`);
      }
      return `subscribed ${user.email} after ${attempts[user.email]} attempts`;
    });
    return { email: user.email, subscribed };
  },
);

const welcome = inngest.createFunction(
  { id: "welcome", triggers: [{ event: "user.signup" }] },
  async ({ event, step }) =>
    step.run("send-welcome", async () => `welcome mail to user ${event.data.user_id}`),
);

const drip = inngest.createFunction(
  { id: "drip", triggers: [{ event: "user.signup" }] },
  async ({ step }) => {
    await step.sleep("wait-4-days", "4d");
    const booking = await step.waitForEvent("first-booking", {
      event: "booking.created", match: "data.user_id", timeout: "3d" });
    return booking ? `booked ${booking.data.booking_id}` : "no booking";
  },
);

const charge = inngest.createFunction(
  {
    id: "charge", retries: 1, triggers: [{ event: "order.charge" }],
    onFailure: async ({ error }) => `handled: ${error.message}`,
  },
  async ({ event }) => {
    if (event.data.refuse) throw new NonRetriableError("card reported stolen");
    throw new Error("card declined");
  },
);

const basket = inngest.createFunction(
  { id: "basket", triggers: [{ event: "basket.checked" }] },
  async ({ step }) => {
    const [tea, cake] = await Promise.all([
      step.run("price-tea", async () => 3), step.run("price-cake", async () => 5)]);
    const total = await step.run("total", async () => tea + cake);
    return { tea, cake, total };
  },
);

const checkout = inngest.createFunction(
  { id: "checkout", triggers: [{ event: "order.placed" }] },
  async ({ event, step }) => {
    const taxed = await step.invoke("tax", {
      function: referenceFunction({ appId: "billing", functionId: "tax" }),
      data: { amount: event.data.amount } });
    const hello = await step.invoke("hello", {
      function: referenceFunction({ appId: "seed-app", functionId: "hello-world" }),
      data: { email: "buyer@example.com" } });
    return { taxed, hello };
  },
);

const exporter = inngest.createFunction(
  {
    id: "export", triggers: [{ event: "export.requested" }],
    concurrency: [{ limit: 1, key: "event.data.account" }],
  },
  async ({ event, step }) =>
    step.run("write", async () => {
      const start = Date.now();
      await pause(150);
      (spans[event.data.account] ??= []).push([start, Date.now()]);
      return `exported ${event.data.part}`;
    }),
);

const digest = inngest.createFunction(
  {
    id: "digest", triggers: [{ event: "digest.requested" }],
    debounce: { period: "1s", key: "event.data.user_id" },
  },
  async ({ event }) => `digest after change ${event.data.n}`,
);

const trial = inngest.createFunction(
  {
    id: "trial", triggers: [{ event: "trial.started" }],
    cancelOn: [{ event: "trial.converted", match: "data.user_id" }],
  },
  async ({ step }) => {
    await step.sleep("trial-period", "14d");
    return step.run("expire", async () => "trial expired");
  },
);

const nightly = inngest.createFunction(
  { id: "nightly", triggers: [{ cron: "TZ=Europe/Paris 0 3 * * *" }] },
  async ({ event, step }) => step.run("report", async () => `report for ${event.name}`),
);

const long = inngest.createFunction(
  { id: "long", retries: 5, triggers: [{ event: "long.job" }] },
  async ({ runId, step }) => {
    const done: number[] = [];
    for (let i = 0; i < 6; i++) {
      done.push(await step.run(`part-${i}`, async () => {
        ran(runId, `part-${i}`);
        await pause(300);
        return i;
      }));
    }
    return done;
  },
);

// Signals (step.waitForSignal, inngest.sendSignal) and singleton, the 4.x SDK's own tools.
const approval = inngest.createFunction(
  { id: "approval", retries: 0, triggers: [{ event: "approval.requested" }] },
  async ({ event, step }) => step.waitForSignal("await-approval", {
    signal: `approval-${event.data.id}`, timeout: "1h",
  }),
);

const approver = inngest.createFunction(
  { id: "approver", triggers: [{ event: "approval.given" }] },
  async ({ event, step }) => step.run("send-signal", async () => inngest.sendSignal({
    signal: `approval-${event.data.id}`, data: { by: event.data.by },
  })),
);

const accountSync = inngest.createFunction(
  {
    id: "account-sync", triggers: [{ event: "account.sync" }],
    singleton: { key: "event.data.account", mode: "skip" },
  },
  async ({ event, step }) => {
    await step.sleep("slow-sync", "1h");
    return `synced ${event.data.account}`;
  },
);

const app = express();
app.use(express.json({ limit: "10mb" }));
app.use("/api/inngest", serve({
  client: inngest,
  functions: [signup, welcome, drip, charge, basket, checkout, exporter, digest, trial, nightly,
              long, approval, approver, accountSync],
}));
app.get("/test/state", (_req, res) => { res.json({ executions, spans }); });
app.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("ts-shop listening"));
