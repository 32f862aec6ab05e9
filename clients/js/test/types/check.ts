// Compiled (not run) by `npm test`: the public types accept the WebSocket constructors users pass.
import WebSocket from "ws";
import { HeraldClient, HeraldError, type Message, type Recovery } from "../../dist/index.js";

const fromWs = new HeraldClient({ url: "ws://127.0.0.1:8080/ws", WebSocket });
const fromDom = new HeraldClient({ url: "ws://127.0.0.1:8080/ws", WebSocket: globalThis.WebSocket });
fromWs.on("message", (m: Message) => m.offset.toFixed());
fromDom.on("recovery", (r: Recovery) => r.recovered === false);
fromWs.subscribe("news").catch((e: unknown) => e instanceof HeraldError && e.code === "forbidden");
