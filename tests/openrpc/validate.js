// Validates an OpenRPC document with the OpenRPC project's own tools: the meta-schema check
// (validateOpenRPCDocument) and the parse that resolves every $ref (parseOpenRPCDocument).
// Usage: node validate.js proto-docs/openrpc.json   (scripts/test runs it; see PROTOCOL.md)
"use strict";
const fs = require("fs");
const { validateOpenRPCDocument, parseOpenRPCDocument } = require("@open-rpc/schema-utils-js");

async function main() {
  const file = process.argv[2];
  if (!file) throw new Error("usage: node validate.js OPENRPC.json");
  const doc = JSON.parse(fs.readFileSync(file, "utf8"));
  const valid = validateOpenRPCDocument(doc);
  if (valid !== true) throw new Error(`${file}: ${valid.message}`);
  // Dereferences every $ref (schemas, errors) and validates again.
  const parsed = await parseOpenRPCDocument(JSON.parse(JSON.stringify(doc)));
  console.log(`${file}: valid OpenRPC ${doc.openrpc}, ${parsed.methods.length} methods`);
}

main().catch((e) => {
  console.error(`validate.js: ${e.message || e}`);
  process.exit(1);
});
