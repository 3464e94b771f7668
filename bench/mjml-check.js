// Compiles one MJML file with the reference compiler in strict mode and
// writes the HTML. Used by tests/mjml_reference.rs.
//
//   node bench/mjml-check.js IN.mjml OUT.html
//
// Exit 0 and a JSON line {"errors": [], "bytes": N} when the MJML is valid;
// exit 1 with the compiler's complaints otherwise. The `mjml` package is
// looked up in $MJML_DIR/node_modules (scripts/test.sh sets it), else beside
// this script.
"use strict";
const fs = require("fs");
const path = require("path");

async function main() {
  const [input, output] = process.argv.slice(2);
  if (!input || !output) {
    console.error("usage: node bench/mjml-check.js IN.mjml OUT.html");
    process.exit(2);
  }
  const from = process.env.MJML_DIR || __dirname;
  const mjml2html = require(require.resolve("mjml", { paths: [from] }));
  const text = fs.readFileSync(input, "utf8");
  let result;
  try {
    // mjml 5 returns a promise; strict validation rejects on invalid MJML.
    result = await mjml2html(text, { validationLevel: "strict", filePath: path.resolve(input) });
  } catch (e) {
    const details = (e.errors || []).map((x) => x.formattedMessage || x.message);
    console.error(`invalid MJML in ${input}: ${e.message}`);
    for (const d of details) console.error(`  ${d}`);
    process.exit(1);
  }
  if (result.errors && result.errors.length > 0) {
    console.error(`invalid MJML in ${input}:`);
    for (const x of result.errors) console.error(`  ${x.formattedMessage || x.message}`);
    process.exit(1);
  }
  fs.writeFileSync(output, result.html);
  console.log(JSON.stringify({ errors: [], bytes: Buffer.byteLength(result.html) }));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
