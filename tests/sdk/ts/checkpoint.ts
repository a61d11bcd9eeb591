// Functions on Inngest's TypeScript SDK (4.x, Express 5) for tests/sdk/test_ts_checkpoint.py:
// with checkpointing (4.x's default when the server offers it) a call runs step after step.
// The app counts what happened: each step's executions per run, the server's calls per run
// (and whether each offered checkpointing: ctx.fn_id), for the tests to read at /test/state.
import { existsSync } from "node:fs";
import express from "express";
import { Inngest } from "inngest";
import { serve } from "inngest/express";

const inngest = new Inngest({ id: "ckpt" });

const executions: Record<string, number> = {};
const calls: Record<string, number> = {};
const offered: Record<string, number> = {};
const ran = (runId: string, name: string) => {
  const key = `${runId}/${name}`;
  executions[key] = (executions[key] ?? 0) + 1;
};
const pause = (ms: number) => new Promise((done) => setTimeout(done, ms));

// Five steps in a row; the same with checkpointing turned off in the app, for comparison.
const fiveSteps = async ({ runId, step }: { runId: string; step: any }) => {
  const out: string[] = [];
  for (let i = 1; i <= 5; i++) {
    out.push(await step.run(`s${i}`, async () => { ran(runId, `s${i}`); return `v${i}`; }));
  }
  return out;
};
const steps = inngest.createFunction(
  { id: "steps", retries: 0, triggers: [{ event: "ckpt.steps" }] }, fiveSteps);
const classic = inngest.createFunction(
  { id: "classic", retries: 0, checkpointing: false, triggers: [{ event: "ckpt.classic" }] },
  fiveSteps);

// s3 blocks until the file named by the event exists (the test opens the gate), so a worker
// can be killed while a checkpointed call is in the middle of its steps.
const gated = inngest.createFunction(
  { id: "gated", retries: 3, triggers: [{ event: "ckpt.gated" }] },
  async ({ event, runId, step }) => {
    const a = await step.run("s1", async () => { ran(runId, "s1"); return 1; });
    const b = await step.run("s2", async () => { ran(runId, "s2"); return 2; });
    const c = await step.run("s3", async () => {
      ran(runId, "s3");
      const deadline = Date.now() + 120_000;
      while (!existsSync(event.data.gate)) {
        if (Date.now() > deadline) throw new Error("the gate never opened");
        await pause(20);
      }
      ran(runId, "s3-done");
      return 3;
    });
    const d = await step.run("s4", async () => { ran(runId, "s4"); return 4; });
    const e = await step.run("s5", async () => { ran(runId, "s5"); return 5; });
    return [a, b, c, d, e];
  },
);

// A sleep between checkpointed steps, and a step that fails once: what cannot run inline is
// answered to the call, and the run goes on as on the classic path.
const mixed = inngest.createFunction(
  { id: "mixed", retries: 2, triggers: [{ event: "ckpt.mixed" }] },
  async ({ runId, step }) => {
    const a = await step.run("before", async () => { ran(runId, "before"); return "a"; });
    await step.sleep("nap", "1s");
    const b = await step.run("flaky", async () => {
      ran(runId, "flaky");
      if (executions[`${runId}/flaky`] === 1) throw new Error("first attempt fails");
      return "b";
    });
    const c = await step.run("after", async () => { ran(runId, "after"); return "c"; });
    return [a, b, c];
  },
);

const app = express();
app.use(express.json({ limit: "10mb" }));
app.post("/api/inngest", (req, _res, next) => {
  const ctx = req.body?.ctx;
  if (ctx?.run_id) {
    calls[ctx.run_id] = (calls[ctx.run_id] ?? 0) + 1;
    if (ctx.fn_id) offered[ctx.run_id] = (offered[ctx.run_id] ?? 0) + 1;
  }
  next();
});
app.use("/api/inngest", serve({ client: inngest, functions: [steps, classic, gated, mixed] }));
app.get("/test/state", (_req, res) => { res.json({ executions, calls, offered }); });
app.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("ckpt listening"));
