// A Weir transform: alerts when a device's temperature jumped by more than `max_jump` (the stage's
// config, default 15) since its previous reading, and forwards every reading to `rows`.
//
// Build it with `weir plugin build`, test it natively with `node --test` and through the host with
// `weir plugin test`.

import { Reject, transform } from "weir";

export const process = transform((event, ctx) => {
  const maxJump = ctx.config.max_jump ?? 15.0;
  const reading = event.json();
  for (const field of ["DeviceId", "Temperature"]) {
    if (reading[field] === undefined) throw new Reject(`missing field \`${field}\``);
  }
  const device = reading.DeviceId;
  const temperature = reading.Temperature;
  const last = ctx.get(device); // keyed state, as the Rust SDK stores it
  if (last !== undefined && Math.abs(temperature - last.temperature) > maxJump) {
    ctx.emit("alerts", { DeviceId: device, From: last.temperature, To: temperature });
  }
  ctx.put(device, { temperature });
  ctx.forward("rows");
});
