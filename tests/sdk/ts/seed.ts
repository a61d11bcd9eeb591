// The seeds' own sample: Inngest's TypeScript SDK 3.x in its 3.x form,
// `createFunction(options, { event }, handler)`, served by Express 4.
import express from "express4";
import { Inngest } from "inngest3";
import { serve } from "inngest3/express";

const inngest = new Inngest({ id: "seed-app" });

const helloWorld = inngest.createFunction(
  { id: "hello-world" },
  { event: "test/hello.world" },
  async ({ event, step }) => {
    const greeting = await step.run("greet", async () => `Hello ${event.data.email}!`);
    return { message: greeting };
  },
);

const reminder = inngest.createFunction(
  { id: "reminder", retries: 2 },
  { event: "app/reminder.set" },
  async ({ event, step }) => {
    await step.sleep("wait-a-day", "1d");
    const seen = await step.waitForEvent("wait-for-ack", {
      event: "app/reminder.ack", timeout: "1h", if: "async.data.id == event.data.id" });
    return seen ? `acknowledged ${event.data.id}` : `no ack for ${event.data.id}`;
  },
);

const app = express();
app.use(express.json({ limit: "10mb" }));
app.use("/api/inngest", serve({ client: inngest, functions: [helloWorld, reminder] }));
app.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("seed-app listening"));
