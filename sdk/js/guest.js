// The component side: the host's imports as the SDK's host, and the bodies of the exports. Imported
// only inside a component built by componentize-js (the build command generates the entry module
// that exports the world's interface from these functions); `weir/testing` replaces the host with
// memory under `node --test`.

import { get, writeBatch, checkCache } from "weir:plugin/state@0.3.0";
import { counterAdd } from "weir:plugin/metrics@0.3.0";
import { write } from "weir:plugin/log@0.3.0";
import { get as configGet } from "weir:plugin/config@0.3.0";
import { lookup } from "weir:plugin/reference@0.3.0";
import { Context, PLUGIN, runFinish, runFold, runJoin, runTransform } from "./weir.js";

/** The host, through the imports every plugin world has. */
const host = {
  stateGet: (key) => get(key),
  stateWriteBatch: (writes) => writeBatch(writes),
  stateCheckCache: () => checkCache(),
  counterAdd: (name, delta) => counterAdd(name, BigInt(delta)),
  log: (level, message, fields) => write(level, message, fields),
  config: () => configGet(),
  referenceLookup: (table, key) => lookup(table, key),
};

let ctx = null;
function context() {
  if (ctx === null) ctx = new Context(host);
  return ctx;
}

/** The body of `transform.process`. */
export function process(batch) {
  return runTransform(context(), PLUGIN.transform, batch);
}

/** The body of `aggregate.fold`. */
export function fold(request) {
  return runFold(context(), request);
}

/** The body of `aggregate.finish`. */
export function finish(request) {
  return runFinish(context(), request);
}

/** The body of `join.enrich`. */
export function enrich(request) {
  return runJoin(context(), request);
}
