// Serves the users' own function, `users-sample/my-function.ts` (byte for byte the file of
// shared/seed-sample), with Express and Inngest's official SDK: SAMPLE_SDK=3 serves it as written
// (npm inngest 3.x, Express 4); SAMPLE_SDK=4 with the one change 4.x needs, the trigger moved
// into `triggers: [...]` (npm inngest 4.x, Express 5). The sample imports its client from the
// module `inngest-client`, which this harness provides in SAMPLE_OUT (a scratch folder).
//
// The harness observes without touching the sample's code: a middleware counts the runs whose
// calls are in flight at once (each call is held CALL_DELAY_MS, so overlapping runs show), and
// console.log / console.error are recorded; a `console.log` of a step result containing
// "[fail]" throws, which makes the sample's `final-step` keep failing.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const major = process.env.SAMPLE_SDK === "3" ? 3 : 4;
const out = process.env.SAMPLE_OUT;
if (!out) throw new Error("SAMPLE_OUT (a scratch folder) is required");
const delay = Number(process.env.CALL_DELAY_MS ?? "0");

const express = (await import(major === 3 ? "express4" : "express")).default;
const { Inngest } = await import(major === 3 ? "inngest3" : "inngest");
const { serve } = await import(major === 3 ? "inngest3/express" : "inngest/express");

const logs: string[] = [];
const errors: string[] = [];
const format = (args: unknown[]) =>
  args.map((a) => (typeof a === "string" ? a : a instanceof Error ? `${a.name}: ${a.message}`
    : JSON.stringify(a))).join(" ");
const log = console.log.bind(console);
console.log = (...args: unknown[]) => {
  logs.push(format(args));
  if (args[0] === "Finished processing:" && String(args[1]).includes("[fail]")) {
    throw new Error(`cannot finish ${String(args[1])}`);
  }
  log(...args);
};
console.error = (...args: unknown[]) => { errors.push(format(args)); log(...args); };

// The module the sample imports its client from.
(globalThis as Record<string, unknown>).usersSampleClient = new Inngest({ id: process.env.APP_ID ?? "users-sample" });
mkdirSync(join(out, "node_modules", "inngest-client"), { recursive: true });
writeFileSync(join(out, "node_modules", "inngest-client", "package.json"),
  JSON.stringify({ name: "inngest-client", type: "module", main: "index.js" }));
writeFileSync(join(out, "node_modules", "inngest-client", "index.js"),
  "export const inngest = globalThis.usersSampleClient;\n");

let source = readFileSync(new URL("./users-sample/my-function.ts", import.meta.url), "utf8");
if (major === 4) {  // 4.x: createFunction({ ..., triggers }, handler)
  const written = "},\n{ event: 'my/event.triggered' },\nasync";
  if (!source.includes(written)) throw new Error("the sample's trigger is not where it was");
  source = source.replace(written, "triggers: [{ event: 'my/event.triggered' }],\n},\nasync");
}
writeFileSync(join(out, "my-function.ts"), source);
const { createMyFunction } = await import(pathToFileURL(join(out, "my-function.ts")).href);
const fn = createMyFunction({});

const inFlight = new Map<string, number>();
let most = 0;
let calls = 0;
const app = express();
app.use(express.json({ limit: "10mb" }));
app.post("/api/inngest", async (req: any, _res: any, next: any) => {
  const runId: string | undefined = req.body?.ctx?.run_id;
  if (!runId) return next();
  calls += 1;
  inFlight.set(runId, (inFlight.get(runId) ?? 0) + 1);
  most = Math.max(most, inFlight.size);
  await new Promise((done) => setTimeout(done, delay));
  _res.on("finish", () => {
    const left = (inFlight.get(runId) ?? 1) - 1;
    if (left > 0) inFlight.set(runId, left); else inFlight.delete(runId);
  });
  next();
});
app.get("/test/state", (_req: any, res: any) => res.json({ most, calls, logs, errors }));
app.use("/api/inngest", serve({ client: (globalThis as any).usersSampleClient, functions: [fn] }));
app.listen(Number(process.env.PORT), "127.0.0.1", () => log(`users-sample (inngest ${major}.x) listening`));
