// `node --import <this file>`: resolves `import ... from "weir"` (and "weir/testing") to this SDK,
// so that a plugin and its tests import the SDK by name wherever they are, as the build command
// does when it makes the component.
import { register } from "node:module";

register(new URL("./resolve.js", import.meta.url));
