// Reference token ids and decoded text from @lenml/tokenizers (a JavaScript port of the
// Hugging Face tokenizers, as transformers.js runs them) for the real tokenizer files of
// Llama 3, Llama 2, DeepSeek V3 and Qwen3, over hard texts.
// usage: node reference.js NODE_MODULES_DIR TEXTS.json OUT.json
const path = require("path");
const fs = require("fs");
const [modules, textsPath, outPath] = process.argv.slice(2);
const names = ["llama3", "llama2", "deepseek_v3", "qwen3"];
const texts = JSON.parse(fs.readFileSync(textsPath, "utf8"));
const out = {};
for (const name of names) {
  const pkg = path.join(modules, "@lenml", "tokenizer-" + name);
  const { fromPreTrained } = require(pkg);
  const tok = fromPreTrained();
  const cases = [];
  for (const text of texts) {
    const plain = Array.from(tok.encode(text, { add_special_tokens: false }));
    const special = Array.from(tok.encode(text, { add_special_tokens: true }));
    cases.push({
      text,
      ids: plain,
      ids_special: special,
      // (the port refuses to decode an empty list)
      decoded: plain.length ? tok.decode(plain, { skip_special_tokens: false }) : "",
      decoded_skip: special.length ? tok.decode(special, { skip_special_tokens: true }) : "",
    });
  }
  out[name] = { dir: path.join(pkg, "models"), cases };
}
fs.writeFileSync(outPath, JSON.stringify(out));
