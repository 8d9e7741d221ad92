// Device health, as the Rust `device-health` window aggregate: per device and 10-minute window,
// the number of messages and the average battery level and signal strength; an alert when a device
// sends too little, or its battery or signal is low. The accumulator is the Rust plugin's JSON form
// (`messages`, `battery_sum`, `signal_sum`). The host adds `DeviceId`, `Location`, `WindowStart`
// and `WindowEnd` to each alert.
import { Reject, window } from "weir";

const DEFAULTS = {
  min_messages: 10,
  min_battery: 20.0,
  min_signal: -80.0,
  critical_battery: 10.0,
  high_below_messages: 5,
};

function number(reading, name) {
  const value = reading[name];
  if (value === undefined) throw new Reject(`missing field \`${name}\``);
  if (typeof value !== "number") throw new Reject(`invalid type: ${name} is ${JSON.stringify(value)}, expected a number`);
  return value;
}

/** The alert a window with these figures raises, if any. */
export function assess(t, health) {
  const messages = health.messages;
  if (messages === 0) return null;
  const avgBattery = health.battery_sum / messages;
  const avgSignal = health.signal_sum / messages;
  if (!(messages < t.min_messages || avgBattery < t.min_battery || avgSignal < t.min_signal)) return null;
  const severity = avgBattery < t.critical_battery ? "Critical"
    : messages < t.high_below_messages ? "High" : "Medium";
  return { MessageCount: messages, AvgBattery: avgBattery, AvgSignal: avgSignal, AlertType: "DeviceHealth", Severity: severity };
}

export const health = window({
  // The fields `fold` reads: the host hands them over without the body being parsed here.
  fields: ["BatteryLevel", "SignalStrength"],
  init: () => ({ messages: 0, battery_sum: 0.0, signal_sum: 0.0 }),
  fold(acc, event) {
    const reading = event.json();
    const battery = number(reading, "BatteryLevel");
    const signal = number(reading, "SignalStrength");
    acc.messages += 1;
    acc.battery_sum += battery;
    acc.signal_sum += signal;
    return acc;
  },
  finish(acc, _window, ctx) {
    const unknown = Object.keys(ctx.config).filter((k) => !(k in DEFAULTS)).sort();
    if (unknown.length > 0) throw new Reject(`invalid stage config: unknown field \`${unknown[0]}\``);
    const alert = assess({ ...DEFAULTS, ...ctx.config }, acc);
    if (alert !== null) {
      ctx.counter("alerts");
      ctx.emit("alerts", alert);
    }
  },
});
