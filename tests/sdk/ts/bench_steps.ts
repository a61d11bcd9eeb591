// A 20-step function on Inngest's TypeScript SDK (4.x, Express 5), for bench/sdk_steps.py
// (it lives here to use this folder's node_modules).
import express from "express";
import { Inngest } from "inngest";
import { serve } from "inngest/express";

const inngest = new Inngest({ id: "bench-ts" });
const STEPS = 20;

const steps = inngest.createFunction(
  { id: "steps", retries: 0, triggers: [{ event: "bench.ts" }] },
  async ({ step }) => {
    for (let i = 0; i < STEPS; i++) await step.run(`step-${i}`, async () => i);
    return STEPS;
  },
);

const app = express();
app.use(express.json({ limit: "10mb" }));
app.use("/api/inngest", serve({ client: inngest, functions: [steps] }));
app.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("bench-ts listening"));
