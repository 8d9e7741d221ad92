// The resolve hook `register.js` installs: `weir` and `weir/testing` are this SDK's files.
const FILES = {
  weir: new URL("./weir.js", import.meta.url).href,
  "weir/testing": new URL("./testing.js", import.meta.url).href,
};

export async function resolve(specifier, context, next) {
  if (Object.hasOwn(FILES, specifier)) return { url: FILES[specifier], shortCircuit: true };
  return next(specifier, context);
}
