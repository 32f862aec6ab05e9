// Test helpers: start a real Herald server, mint tokens, wait for conditions with a deadline.
import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, writeFileSync, readFileSync, existsSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
/** The herald binary: $HERALD_BIN, else the workspace's debug build. */
export const HERALD_BIN = process.env.HERALD_BIN || resolve(here, "../../../target/debug/herald");
export const JWT_SECRET = "js-client-tests-secret-0123456789abcdef";

/** Polls `check` (sync or async) every 20 ms until it returns a truthy value; throws after `ms`. */
export async function waitFor(check, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (let i = 0; Date.now() < deadline && i < ms / 10; i++) {
    const value = await check();
    if (value) return value;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

/**
 * Starts `herald serve` with `config` (TOML) on a free port; resolves once it answers /healthz.
 * `again`: a stopped server's `{ port, dir }` to start it again on the same port and data.
 */
export async function startHerald(config, again) {
  if (!existsSync(HERALD_BIN)) throw new Error(`no herald binary at ${HERALD_BIN}: build it (cargo build -p herald) or set HERALD_BIN`);
  const dir = again?.dir ?? mkdtempSync(join(tmpdir(), "herald-js-"));
  const configFile = join(dir, "herald.toml");
  writeFileSync(configFile, config);
  const port = again?.port ?? (await freePort());
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith("HERALD_")) delete env[k];
  const child = spawn(HERALD_BIN, ["serve", "-c", configFile, "--listen", `127.0.0.1:${port}`, "--data-dir", join(dir, "data")], {
    env,
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  let exited = false;
  child.on("exit", () => (exited = true));
  const http = `http://127.0.0.1:${port}`;
  try {
    await waitFor(async () => {
      if (exited) throw new Error(`herald exited:\n${stderr}`);
      try {
        return (await fetch(`${http}/healthz`)).ok;
      } catch {
        return false;
      }
    }, "herald to listen", 20_000);
  } catch (e) {
    child.kill("SIGKILL");
    throw e;
  }
  const adminKey = readFileSync(join(dir, "data", "admin.key"), "utf8").trim();
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    http,
    adminKey,
    port,
    dir,
    /** Calls the HTTP API with the admin key; resolves with the parsed body, throws on non-2xx. */
    async api(method, path, body) {
      const res = await fetch(http + path, {
        method,
        headers: { authorization: `Bearer ${adminKey}` },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const json = await res.json();
      if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
      return json;
    },
    /** Stops the server; `keepData`: leave its directory to start it again. */
    async stop({ keepData = false } = {}) {
      if (!exited) {
        const gone = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 5000);
        await gone;
        clearTimeout(t);
      }
      if (!keepData) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A JWT connection token minted by `herald token`. */
export function mintToken(sub, ...args) {
  return execFileSync(HERALD_BIN, ["token", "--sub", sub, "--secret", JWT_SECRET, ...args], { encoding: "utf8" }).trim();
}

/** An HS256 JWT that expired an hour ago (`herald token` only mints tokens that are valid now). */
export function expiredToken(sub) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, iat: now - 7200, exp: now - 3600 })}`;
  return `${body}.${createHmac("sha256", JWT_SECRET).update(body).digest("base64url")}`;
}
