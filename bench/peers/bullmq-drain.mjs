// BullMQ beside the worker's drain: N no-op jobs added in bulk, then one
// Worker with the given concurrency runs them; prints one JSON line with
// jobs/s from the first completed job to the last (start-up excluded, as for
// the worker). Usage: node bullmq-drain.mjs JOBS CONCURRENCY REDIS_PORT
import { Queue, Worker } from "bullmq";

const [jobs, concurrency, port] = process.argv.slice(2).map(Number);
const connection = { host: "127.0.0.1", port };
const name = `peer-drain-${process.pid}`;
const queue = new Queue(name, { connection });
for (let i = 0; i < jobs; i += 1000) {
  const batch = [];
  for (let j = i; j < Math.min(jobs, i + 1000); j++) batch.push({ name: "noop", data: { i: j } });
  await queue.addBulk(batch);
}
let done = 0;
let first = 0n;
await new Promise((resolve) => {
  const worker = new Worker(name, async () => {}, { connection, concurrency });
  worker.on("completed", () => {
    done += 1;
    if (done === 1) first = process.hrtime.bigint();
    if (done === jobs) {
      const seconds = Number(process.hrtime.bigint() - first) / 1e9;
      // The first job's own time is not in the span: jobs - 1 in it.
      console.log(JSON.stringify({ peer: "bullmq", jobs, concurrency, seconds, per_second: Math.round((jobs - 1) / seconds) }));
      worker.close().then(resolve);
    }
  });
});
await queue.obliterate({ force: true });
await queue.close();
