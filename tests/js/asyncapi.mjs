// Parses an AsyncAPI document with the official parser (@asyncapi/parser), as
// tests/test_export.py asks:  node asyncapi.mjs FILE
// Prints one JSON object: {"errors": [...], "warnings": [...]}; exits 1 on any error.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const SEVERITY = ["error", "warning", "info", "hint"];

const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(process.argv[2], "utf8"));
const report = { errors: [], warnings: [] };
for (const diagnostic of diagnostics) {
  const line = {
    code: diagnostic.code,
    message: diagnostic.message,
    path: diagnostic.path.join("/"),
    severity: SEVERITY[diagnostic.severity],
  };
  if (diagnostic.severity === 0) report.errors.push(line);
  else report.warnings.push(line);
}
if (document === undefined && report.errors.length === 0) {
  report.errors.push({ code: "no-document", message: "the parser returned no document" });
}
if (document !== undefined) {
  report.channels = document.channels().all().map((channel) => channel.id());
  report.messages = document.components().messages().all().map((message) => message.id());
}
console.log(JSON.stringify(report, null, 2));
process.exit(report.errors.length === 0 ? 0 : 1);
