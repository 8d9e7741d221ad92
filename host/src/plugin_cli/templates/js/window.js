// A Weir window aggregate: the count, mean and maximum temperature of each window. The
// accumulator is stored as JSON by the host between calls.
//
// Build it with `weir plugin build`, test it natively with `node --test` and through the host with
// `weir plugin test`.

import { Reject, window } from "weir";

export const aggregate = window({
  init: () => ({ count: 0, sum: 0, max: null }),
  // Called for each event of a window, in event-time order; throwing leaves the accumulator as it
  // was and sends the event to the dead letters.
  fold(acc, event) {
    const temperature = event.json().Temperature;
    if (typeof temperature !== "number") throw new Reject("no Temperature");
    acc.count += 1;
    acc.sum += temperature;
    acc.max = acc.max === null ? temperature : Math.max(acc.max, temperature);
    return acc;
  },
  // Called once, when the window closes.
  finish(acc, _window, ctx) {
    ctx.emit("rows", {
      EventCount: acc.count,
      AvgTemperature: acc.sum / Math.max(acc.count, 1),
      MaxTemperature: acc.max,
    });
  },
});
