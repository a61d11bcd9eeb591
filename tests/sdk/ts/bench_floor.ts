// What a checkpointed step costs Inngest's TypeScript SDK (4.x) alone, for bench/sdk_steps.py:
// the 10-step function of bench_steps.ts called the way stepwise calls it (ctx.fn_id and
// ctx.qi_id: the SDK checkpoints), with a stand-in server that answers every checkpoint at once
// and stores nothing. Prints {"per_step_ms_median", "per_step_ms_p90", "checkpoints"} over
// RUNS calls, after WARM_UP.
import http from "node:http";
import type { AddressInfo } from "node:net";
import express from "express";
import { Inngest } from "inngest";
import { serve } from "inngest/express";

const STEPS = 10;
const RUNS = Number(process.argv[2] ?? 30);
const WARM_UP = 3;

let checkpoints = 0;
const server = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    checkpoints += 1;
    res.writeHead(200, { "content-type": "application/json" });
    res.end("{}");
  });
});
await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
process.env.INNGEST_DEV = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

const inngest = new Inngest({ id: "bench-floor" });
const steps = inngest.createFunction(
  { id: "steps", retries: 0, triggers: [{ event: "bench.floor" }] },
  async ({ step }) => {
    for (let i = 0; i < STEPS; i++) await step.run(`step-${i}`, async () => i);
    return STEPS;
  },
);
const app = express();
app.use(express.json({ limit: "10mb" }));
app.use("/api/inngest", serve({ client: inngest, functions: [steps] }));
const served = app.listen(0, "127.0.0.1");
await new Promise<void>((done) => served.on("listening", done));
const url = `http://127.0.0.1:${(served.address() as AddressInfo).port}/api/inngest` +
  "?fnId=bench-floor-steps&stepId=step";

const event = { name: "bench.floor", data: {}, id: "e", ts: 0, user: {} };
const times: number[] = [];
for (let n = 0; n < RUNS + WARM_UP; n++) {
  const call = {
    event, events: [event], steps: {}, version: -1, use_api: false,
    ctx: { run_id: `run-${n}`, step_id: "step", attempt: 0, max_attempts: 1,
           disable_immediate_execution: false, use_api: false,
           stack: { stack: [], current: 0 }, fn_id: "bench-floor-steps", qi_id: "1:bench" },
  };
  const started = performance.now();
  const answer = await fetch(url, {
    method: "POST", body: JSON.stringify(call),
    headers: { "content-type": "application/json", "x-inngest-server-kind": "dev" },
  });
  const ops = await answer.json();
  if (ops?.[0]?.op !== "RunComplete") throw new Error(`not checkpointed: ${JSON.stringify(ops)}`);
  if (n >= WARM_UP) times.push((performance.now() - started) / STEPS);
}
times.sort((a, b) => a - b);
console.log(JSON.stringify({
  per_step_ms_median: Number(times[Math.floor(times.length / 2)].toFixed(3)),
  per_step_ms_p90: Number(times[Math.floor(times.length * 0.9) - 1].toFixed(3)),
  checkpoints,
}));
served.close();
served.closeAllConnections();
server.close();
server.closeAllConnections();
