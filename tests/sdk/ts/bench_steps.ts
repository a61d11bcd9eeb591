// 10-step functions on Inngest's TypeScript SDK (4.x, Express 5), for bench/sdk_steps.py (it
// lives here to use this folder's node_modules): one as the SDK runs it by default (it
// checkpoints when stepwise offers it), the same with checkpointing turned off in the app.
import express from "express";
import { Inngest } from "inngest";
import { serve } from "inngest/express";

const inngest = new Inngest({ id: "bench-ts" });
const STEPS = 10;

const body = async ({ step }: { step: any }) => {
  for (let i = 0; i < STEPS; i++) await step.run(`step-${i}`, async () => i);
  return STEPS;
};
const steps = inngest.createFunction(
  { id: "steps", retries: 0, triggers: [{ event: "bench.ts" }] }, body);
const classic = inngest.createFunction(
  { id: "classic", retries: 0, checkpointing: false, triggers: [{ event: "bench.ts.classic" }] },
  body);

const app = express();
app.use(express.json({ limit: "10mb" }));
app.use("/api/inngest", serve({ client: inngest, functions: [steps, classic] }));
app.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("bench-ts listening"));
