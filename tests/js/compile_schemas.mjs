// Compiles every schema of an OpenAPI 3.1 document with ajv (Draft 2020-12, strict) and
// checks the event-name pattern: prints one JSON line {"compiled": n, "click": bool, "clickZ": bool}.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const Ajv2020 = require("./node_modules/ajv/dist/2020.js").default;
const doc = JSON.parse(readFileSync(process.argv[2], "utf8"));
// strict, but OpenAPI's own annotation keywords are allowed in schemas
const ajv = new Ajv2020({ strict: true, strictRequired: false, allowUnionTypes: true });
ajv.addVocabulary(["discriminator", "xml", "externalDocs", "example"]);
const components = doc.components.schemas;
const retarget = (s, to) => JSON.parse(JSON.stringify(s).replaceAll("#/components/schemas/", to));
ajv.addSchema({ $id: "components", $defs: retarget(components, "#/$defs/") });
const rewrite = (s) => retarget(s, "components#/$defs/");
let compiled = 0;
for (const name of Object.keys(components)) {
  ajv.compile({ $ref: `components#/$defs/${name}` });
  compiled++;
}
for (const path of Object.values(doc.paths)) {
  for (const op of Object.values(path)) {
    for (const p of op.parameters ?? []) {
      ajv.compile(rewrite(p.schema));
      compiled++;
    }
    for (const media of Object.values(op.requestBody?.content ?? {})) {
      ajv.compile(rewrite(media.schema));
      compiled++;
    }
    for (const reply of Object.values(op.responses ?? {})) {
      for (const media of Object.values(reply.content ?? {})) {
        ajv.compile(rewrite(media.schema));
        compiled++;
      }
    }
  }
}
const name = ajv.compile(components.EventIn.properties.name);
console.log(JSON.stringify({ compiled, click: name("click"), clickZ: name("clickZ") }));
