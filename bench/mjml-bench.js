// The reference MJML compiler (npm `mjml`), in-process and warm, on one
// file: the counterpart of the `mrml compile` row of benches/render.rs.
//
//   node bench/mjml-bench.js FILE.mjml [SECONDS]
//
// Loads mjml once (its require time is printed apart), warms up, then
// compiles FILE again and again for SECONDS (default 3) and prints the
// minimum and median time per compile, once with validation skipped (the
// least work, the fairest to mjml) and once with the CLI's default
// ("soft"). Lines starting with RESULT are for bench/render.sh.
"use strict";
const fs = require("fs");
const path = require("path");

function ms(ns) {
  return Number(ns) / 1e6;
}

async function series(compile, seconds) {
  const until = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  const samples = [];
  while (process.hrtime.bigint() < until || samples.length < 11) {
    const t = process.hrtime.bigint();
    await compile();
    samples.push(process.hrtime.bigint() - t);
  }
  samples.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return { min: samples[0], median: samples[samples.length >> 1], n: samples.length };
}

async function main() {
  const file = process.argv[2];
  const seconds = Number(process.argv[3] || 3);
  if (!file) {
    console.error("usage: node bench/mjml-bench.js FILE.mjml [SECONDS]");
    process.exit(2);
  }
  const text = fs.readFileSync(file, "utf8");
  const t0 = process.hrtime.bigint();
  const mjml2html = require(require.resolve("mjml", { paths: [process.env.MJML_DIR || __dirname] }));
  const requireNs = process.hrtime.bigint() - t0;
  const version = require(require.resolve("mjml/package.json", { paths: [process.env.MJML_DIR || __dirname] })).version;
  console.log(`mjml ${version} on Node ${process.version}: require('mjml') took ${ms(requireNs).toFixed(0)} ms`);
  console.log(`RESULT mjml_require ${(ms(requireNs) * 1000).toFixed(3)} ${(ms(requireNs) * 1000).toFixed(3)}`);
  for (const level of ["skip", "soft"]) {
    const options = { validationLevel: level, filePath: path.resolve(file) };
    const compile = () => mjml2html(text, options);
    await series(compile, 1); // warm-up: JIT and caches
    const r = await series(compile, seconds / 2);
    const label = `mjml compile (validation ${level})`.padEnd(34);
    console.log(`${label} median ${ms(r.median).toFixed(2).padStart(10)} ms   min ${ms(r.min).toFixed(2).padStart(10)} ms   (${r.n} runs)`);
    console.log(`RESULT mjml_compile_${level} ${(ms(r.median) * 1000).toFixed(3)} ${(ms(r.min) * 1000).toFixed(3)}`);
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
