export { HeraldClient } from "./client.js";
export type { HeraldOptions, SubscriptionToken } from "./client.js";
export { HeraldError } from "./errors.js";
export type { ClientErrorCode } from "./errors.js";
export type * from "./types.js";
