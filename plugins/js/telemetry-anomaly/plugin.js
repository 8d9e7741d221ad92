// Temperature anomalies in IoT telemetry: the seed's rule, as the Rust `telemetry-anomaly` plugin.
//
// For every reading of a device, alert when the temperature moved by more than `delta_threshold`
// (15) since the device's previous reading, if that reading is at most `lag_window_seconds` (300,
// inclusive) older; or when it is above `max_temperature` (80) or below `min_temperature` (0).
// Severity `Critical` above `max_temperature`, else `High` when it moved by more than `high_delta`
// (20), else `Medium`. Every valid reading goes on to `rows`, unchanged.
//
// The keyed state is the Rust plugin's: per `DeviceId`, `{"temperature": ..., "time": ...}`, so a
// stage can swap between the Rust, Python and JavaScript versions with it.

import { Reject, transform } from "weir";

const DEFAULTS = {
  delta_threshold: 15.0,
  high_delta: 20.0,
  max_temperature: 80.0,
  min_temperature: 0.0,
  lag_window_seconds: 300,
};

// The fields the rule reads: `event.json()` holds only these, which the host hands over without the
// body being parsed in the plugin.
const READS = ["DeviceId", "Temperature", "Timestamp", "EventId", "Location"];

let cached = [null, null];

/** The stage's config over the defaults, once per instance (the context lives as long as the
 * instance); an unknown setting rejects. */
function thresholds(ctx) {
  if (cached[0] !== ctx) {
    const config = ctx.config;
    const unknown = Object.keys(config).filter((k) => !(k in DEFAULTS)).sort();
    if (unknown.length > 0) throw new Reject(`invalid stage config: unknown field \`${unknown[0]}\``);
    cached = [ctx, { ...DEFAULTS, ...config }];
  }
  return cached[1];
}

const FIELDS = [["DeviceId", "string"], ["Temperature", "number"], ["Timestamp", "string"], ["EventId", "string"]];

/** Why a reading does not have the four fields with their types. */
function invalid(reading) {
  for (const [name, type] of FIELDS) {
    const value = reading[name];
    if (value === undefined) return `missing field \`${name}\``;
    if (typeof value !== type) return `invalid type: ${name} is ${JSON.stringify(value)}, expected a ${type}`;
  }
  return "invalid reading";
}

export const process = transform((event, ctx) => {
  // The checks are written out rather than in helpers: this runs for every event, and inside a
  // component JavaScript is interpreted, where a call is much of the cost of a line.
  const t = cached[0] === ctx ? cached[1] : thresholds(ctx);
  const reading = event.json();
  const device = reading.DeviceId;
  const temperature = reading.Temperature;
  const timestamp = reading.Timestamp;
  const eventId = reading.EventId;
  if (typeof device !== "string" || typeof temperature !== "number"
    || typeof timestamp !== "string" || typeof eventId !== "string") {
    throw new Reject(invalid(reading));
  }
  const now = event.time;

  const stored = ctx.get(device);
  let previous = null;
  if (stored !== undefined) {
    const age = now - stored.time;
    if (age >= 0 && age <= t.lag_window_seconds * 1000) previous = stored.temperature;
  }
  const delta = previous === null ? 0 : Math.abs(temperature - previous);
  let severity = null;
  if (temperature > t.max_temperature) severity = "Critical";
  else if (delta > t.delta_threshold || temperature < t.min_temperature) {
    severity = delta > t.high_delta ? "High" : "Medium";
  }
  if (severity !== null) {
    ctx.emit("alerts", {
      DeviceId: device,
      Location: reading.Location ?? null,
      Temperature: temperature,
      PrevTemperature: previous,
      TempDelta: previous === null ? null : temperature - previous,
      EventTime: timestamp,
      AlertType: "TemperatureAnomaly",
      Severity: severity,
      EventId: eventId,
    });
    ctx.counter("alerts");
  }
  if (stored === undefined || stored.time <= now) {
    ctx.put(device, { temperature, time: now });
  } else {
    ctx.counter("out_of_order_readings");
  }
  ctx.forward("rows");
}, { fields: READS });
