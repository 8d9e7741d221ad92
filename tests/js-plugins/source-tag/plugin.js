// Tags every event with the name of the source it came from (`event.source`).
import { transform } from "weir";

transform((event, ctx) => {
  ctx.emit("out", { n: event.json().n, source: event.source, key: event.key });
});
