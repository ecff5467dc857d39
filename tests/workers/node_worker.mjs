// A flowmetal task worker in Node, with nothing but the built-in fetch.
// usage: node node_worker.mjs URL TOKEN QUEUE NAME [MAX_TASKS]
// Each task's result is {worker, attempt, input: <the payload>, runtime: "node"}.
const [url, token, queue, name, max = "0"] = process.argv.slice(2);
const headers = { Authorization: `token ${token}`, "Content-Type": "application/json" };
const post = (path, body) =>
  fetch(url + path, { method: "POST", headers, body: JSON.stringify(body) });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

for (let n = 0; Number(max) === 0 || n < Number(max); ) {
  let res;
  try {
    res = await post(`/queues/${encodeURIComponent(queue)}/claim`, { worker: name, wait: 5 });
  } catch {
    await sleep(500); // the kernel is away; its address stays the same
    continue;
  }
  if (res.status === 204) continue;
  if (res.status !== 200) { await sleep(500); continue; }
  const t = await res.json();
  const result = { worker: name, attempt: t.attempt, input: t.payload, runtime: "node" };
  for (;;) {
    try {
      const done = await post(`/tasks/${t.task_id}/complete`, { lease: t.lease, result });
      if (done.status !== 200) console.error(`complete ${t.task_id}: ${done.status}`);
      break;
    } catch {
      await sleep(500);
    }
  }
  n += 1;
}
