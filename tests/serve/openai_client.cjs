// Drives `shardlm serve` with the official OpenAI client (npm `openai`, installed by
// scripts/install-deps.sh into the npm cache). usage:
//   node openai_client.cjs NPM_CACHE JOB.json
// JOB: {"base_url", "api_key", "model", "requests": [{"id", "stream", "chat"?, ...params}]}
// (chat: client.chat.completions with "messages", else client.completions with "prompt").
// Prints one JSON line per request: {"id", "text", "finish_reason", "usage", "chunks",
// "logprobs"?, "role"?} or {"id", "error": {"status", "message"}}.
const path = require("path");
const fs = require("fs");

const [cache, jobPath] = process.argv.slice(2);
const OpenAI = require(path.join(cache, "node_modules", "openai"));
const job = JSON.parse(fs.readFileSync(jobPath, "utf8"));
const client = new OpenAI({ baseURL: job.base_url, apiKey: job.api_key || "none", maxRetries: 0 });

async function chat(id, params) {
  if (!params.stream) {
    const r = await client.chat.completions.create(params);
    const c = r.choices[0];
    return { id, text: c.message.content, role: c.message.role, finish_reason: c.finish_reason,
             usage: r.usage, chunks: 0 };
  }
  const stream = await client.chat.completions.create(params);
  let text = "", role = null, finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    const c = chunk.choices[0];
    if (c.delta.role) role = c.delta.role;
    if (c.delta.content) text += c.delta.content;
    if (c.finish_reason) finish = c.finish_reason;
    if (chunk.usage) usage = chunk.usage;
  }
  return { id, text, role, finish_reason: finish, usage, chunks };
}

async function one(request) {
  const { id, chat: isChat, ...params } = request;
  params.model = job.model;
  try {
    if (isChat) return await chat(id, params);
    if (!params.stream) {
      const r = await client.completions.create(params);
      const c = r.choices[0];
      return { id, text: c.text, finish_reason: c.finish_reason, usage: r.usage, chunks: 0,
               logprobs: c.logprobs ? c.logprobs.token_logprobs : undefined };
    }
    const stream = await client.completions.create(params);
    let text = "", finish = null, usage = null, chunks = 0;
    const logprobs = [];
    for await (const chunk of stream) {
      chunks += 1;
      const c = chunk.choices[0];
      text += c.text;
      if (c.logprobs) logprobs.push(...c.logprobs.token_logprobs);
      if (c.finish_reason) finish = c.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    return { id, text, finish_reason: finish, usage, chunks,
             logprobs: params.logprobs === 0 ? logprobs : undefined };
  } catch (e) {
    return { id, error: { status: e.status ?? null, message: String(e.message) } };
  }
}

(async () => {
  const results = await Promise.all(job.requests.map(one));
  for (const r of results) process.stdout.write(JSON.stringify(r) + "\n");
})();
