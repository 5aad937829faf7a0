// The official OpenAI client against a running tessera-shard-server:
// completions and chat, whole and streamed, seeded reproducibility and an
// error naming its param. Usage: node check.mjs http://127.0.0.1:PORT/v1
import OpenAI from "openai";

const baseURL = process.argv[2];
if (!baseURL) {
  console.error("usage: node check.mjs <base URL ending in /v1>");
  process.exit(2);
}
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 60_000 });
let failed = 0;
function check(ok, what, detail) {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${detail === undefined ? "" : ": " + JSON.stringify(detail)}`);
  if (!ok) failed++;
}

const models = await client.models.list();
const model = models.data[0].id;
check(typeof model === "string" && model.length > 0, "models.list", model);

const params = { model, max_tokens: 24, temperature: 0.8, top_p: 0.9, seed: 42 };
const c1 = await client.completions.create({ ...params, prompt: "Life is" });
check(c1.object === "text_completion" && c1.choices[0].text.length > 0 && c1.usage.completion_tokens > 0,
  "completions.create", { text: c1.choices[0].text, usage: c1.usage });
const c2 = await client.completions.create({ ...params, prompt: "Life is" });
check(c2.choices[0].text === c1.choices[0].text, "completions: same seed, same text");

let streamed = "";
let finish = null;
const cs = await client.completions.create({ ...params, prompt: "Life is", stream: true });
for await (const chunk of cs) {
  streamed += chunk.choices[0]?.text ?? "";
  finish = chunk.choices[0]?.finish_reason ?? finish;
}
check(streamed === c1.choices[0].text && finish === c1.choices[0].finish_reason, "completions stream", { streamed, finish });

const messages = [
  { role: "system", content: "Be terse." },
  { role: "user", content: "Tell me a story." },
];
const ch = await client.chat.completions.create({ ...params, messages });
check(ch.object === "chat.completion" && ch.choices[0].message.role === "assistant" && ch.usage.total_tokens > 0,
  "chat.completions.create", { content: ch.choices[0].message.content, usage: ch.usage });

let chatStreamed = "";
let role = null;
const chs = await client.chat.completions.create({ ...params, messages, stream: true });
for await (const chunk of chs) {
  role = chunk.choices[0]?.delta?.role ?? role;
  chatStreamed += chunk.choices[0]?.delta?.content ?? "";
}
check(role === "assistant" && chatStreamed === ch.choices[0].message.content, "chat stream", { role, chatStreamed });

try {
  await client.completions.create({ ...params, prompt: "x", logprobs: 2 });
  check(false, "logprobs refused");
} catch (e) {
  check(e instanceof OpenAI.BadRequestError && e.param === "logprobs", "logprobs refused with param", { status: e.status, param: e.param, message: e.message });
}

console.log(failed === 0 ? "openai client check: all passed" : `openai client check: ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
