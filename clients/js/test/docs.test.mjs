// Runs the quick start of docs/js-client.md against a real Herald, as a reader would.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { startHerald } from "./herald.mjs";

const doc = fileURLToPath(new URL("../../../docs/js-client.md", import.meta.url));
// Inside the package, so that `import ... from "@herald/client"` resolves to this package.
const script = fileURLToPath(new URL("./.quickstart.generated.mjs", import.meta.url));
let herald;

before(async () => {
  herald = await startHerald(`
[channels]
client_publish = true
history_size = 100
`);
});

after(async () => {
  rmSync(script, { force: true });
  await herald?.stop();
});

test("the quick start in docs/js-client.md runs", async () => {
  const text = readFileSync(doc, "utf8");
  const section = text.slice(text.indexOf("## Quick start"));
  const block = /```js\n([\s\S]*?)```/.exec(section);
  assert.ok(block, "a js block in the quick start");
  writeFileSync(script, block[1]);
  const out = await new Promise((resolve, reject) =>
    execFile(process.execPath, [script], { env: { ...process.env, HERALD_URL: herald.url }, timeout: 20_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  );
  assert.match(out, /^connected as [0-9a-f-]{36}$/m);
  assert.match(out, /^news #1: \{ headline: 'hello' \}$/m);
  assert.match(out, /^published at offset 1$/m);
  assert.match(out, /^refused: invalid_channel$/m);
  assert.match(out, /^history: \[ \{ headline: 'hello' \} \]$/m);
});
