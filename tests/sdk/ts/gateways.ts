// Functions using the requests Inngest's server makes for the app (the npm SDK 4.x on Express
// 5): `step.fetch` (opcode Gateway) and `step.ai.infer` (AIGateway, with the SDK's own OpenAI
// model), written as the SDK's docs and examples write them; and a step whose id changes on
// every execution, which the SDK answers with StepNotFound when asked to run it. Run by
// tests/sdk/test_gateways.py against stepwise, with a fake provider at event.data.base.
import express from "express";
import { Inngest, openai } from "inngest";
import { serve } from "inngest/express";

const inngest = new Inngest({ id: "ts-gateways" });

// Credentials the requests carry: the test checks they reach the provider and are stored
// nowhere in stepwise.
const FETCH_TOKEN = "fetch-token-5b1f0c9e7d";
const AI_KEY = "sk-test-a1b2c3d4e5f6";

const fetchReport = inngest.createFunction(
  { id: "fetch-report", retries: 1, triggers: [{ event: "report.requested" }] },
  async ({ event, step }) => {
    const res = await step.fetch(`${event.data.base}/reports/${event.data.report}?format=text`, {
      method: "POST",
      headers: { "x-api-token": FETCH_TOKEN, "content-type": "text/plain" },
      body: `report ${event.data.report}, please`,
    });
    const text = await res.text();
    const words = await step.run("count-words", () => text.split(/\s+/).length);
    return { status: res.status, type: res.headers.get("content-type"), text, words };
  },
);

const summarize = inngest.createFunction(
  { id: "summarize", retries: 2, triggers: [{ event: "article.published" }] },
  async ({ event, step }) => {
    const result = await step.ai.infer("summarize", {
      model: openai({ model: "gpt-4o-mini", apiKey: AI_KEY, baseUrl: `${event.data.base}/v1/` }),
      body: {
        messages: [
          { role: "system", content: "You summarize articles in one line." },
          { role: "user", content: event.data.text },
        ],
        temperature: 0.2,
      },
    });
    return result.choices[0].message.content;
  },
);

const refused = inngest.createFunction(
  { id: "refused", retries: 0, triggers: [{ event: "article.refused" }] },
  async ({ event, step }) => {
    try {
      await step.ai.infer("summarize", {
        model: openai({ model: "gpt-4o-mini", apiKey: AI_KEY, baseUrl: `${event.data.base}/v1/` }),
        body: { messages: [{ role: "user", content: event.data.text }] },
      });
      return { caught: null };
    } catch (err) {
      const error = err as Error;
      return { caught: error.message, name: error.name };
    }
  },
);

// A step id made from a counter kept outside steps: each execution names it anew, so the
// step planned by one call is not there when the next call asks for it.
const executions: Record<string, number> = {};
const renamed = inngest.createFunction(
  { id: "renamed-step", retries: 0, triggers: [{ event: "renamed.step" }] },
  async ({ runId, step }) => {
    executions[runId] = (executions[runId] ?? 0) + 1;
    return Promise.all([
      step.run("stable", () => "stable"),
      step.run(`export-${executions[runId]}`, () => "exported"),
    ]);
  },
);

// Throttled with a burst: limit + burst runs may start at once, the others are queued.
const burst = inngest.createFunction(
  { id: "burst", throttle: { limit: 1, period: "1h", burst: 2 },
    triggers: [{ event: "burst.go" }] },
  async ({ event }) => event.data.n,
);

const app = express();
app.use(express.json({ limit: "10mb" }));
app.use("/api/inngest", serve({ client: inngest,
                                 functions: [fetchReport, summarize, refused, renamed, burst] }));
app.listen(Number(process.env.PORT ?? 3000), "127.0.0.1");
