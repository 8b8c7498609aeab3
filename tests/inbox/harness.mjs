// Shared by browser.mjs and mailpit_client.mjs: the fake Google and the real server as child
// processes on free loopback ports, a small SMTP client, and `ok - …` / `not ok - …` checks.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";

const WAIT_MS = 20000;
const children = [];
let passed = 0;
let failed = 0;

/** Records one check; `detail` is shown when it fails. */
export function check(name, condition, detail = "") {
  if (condition) {
    passed += 1;
    console.log(`ok - ${name}`);
  } else {
    failed += 1;
    console.log(`not ok - ${name}${detail ? `: ${detail}` : ""}`);
  }
}

/** Runs `body`, counting a thrown error as a failed check named `name`. */
export async function step(name, body) {
  try {
    await body();
  } catch (error) {
    check(name, false, error && error.stack ? error.stack : String(error));
  }
}

/** Stops every child and prints the closing line; exit status 1 when anything failed. */
export function finish() {
  for (const child of children) child.kill("SIGTERM");
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

/** Lines of a child's stream, waited for by content. */
class Lines {
  constructor(stream) {
    this.seen = [];
    this.waiters = [];
    readline.createInterface({ input: stream }).on("line", (line) => {
      this.seen.push(line);
      this.waiters = this.waiters.filter(({ test, resolve }) => !(test(line) && (resolve(line), true)));
    });
  }

  /** The first line (seen or to come) that contains `text`. */
  wait(text, ms = WAIT_MS) {
    const test = (line) => line.includes(text);
    const found = this.seen.find(test);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no line with ${JSON.stringify(text)} within ${ms} ms`)), ms);
      this.waiters.push({ test, resolve: (line) => (clearTimeout(timer), resolve(line)) });
    });
  }
}

function start(command, args, options) {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], ...options });
  children.push(child);
  return { child, stdout: new Lines(child.stdout), stderr: new Lines(child.stderr) };
}

/** The fake Google: its API base, and its lines (one per accepted upload) to wait on. */
export async function fakeGoogle(dir) {
  const google = start(process.env.FAKE_GOOGLE, [dir]);
  const line = await google.stdout.wait("api_base ");
  return { apiBase: line.split(" ")[1], uploads: google.stdout };
}

/**
 * Starts `smtp2gmail serve` in a new temporary directory with `extra` config (TOML) and free
 * ports; returns its SMTP port, its HTTP base URL and its directory.
 */
export async function server(extra = "", prepare = () => {}) {
  // Under run.sh's work directory, which it removes.
  const dir = mkdtempSync(path.join(process.env.WORK || tmpdir(), "server-"));
  await prepare(dir);
  writeFileSync(
    path.join(dir, "config.toml"),
    `[smtp]\nlisten = ["127.0.0.1:0"]\nshutdown_grace = "2s"\n[http]\nlisten = "127.0.0.1:0"\n${extra}`,
  );
  const running = start(process.env.SMTP2GMAIL, ["serve", "--config", "config.toml"], { cwd: dir });
  const first = await running.stderr.wait("listening on ");
  const smtpPort = Number(first.match(/listening on 127\.0\.0\.1:(\d+)/)[1]);
  const http = (await running.stderr.wait("HTTP endpoints on ")).match(/HTTP endpoints on (http:\/\/\S+?)\/? /)[1];
  return { dir, smtpPort, http, log: running.stderr };
}

/** Sends one message (`raw`, CRLF lines) over SMTP: a minimal client, as in the e2e tests. */
export async function sendMail(port, from, to, raw) {
  const socket = net.connect(port, "127.0.0.1");
  socket.setEncoding("utf8");
  let buffer = "";
  const reply = async () => {
    for (;;) {
      const lines = buffer.split("\r\n");
      const done = lines.findIndex((l) => /^\d{3} /.test(l));
      if (done >= 0) {
        buffer = lines.slice(done + 1).join("\r\n");
        return lines[done];
      }
      const [chunk] = await once(socket, "data");
      buffer += chunk;
    }
  };
  const command = async (line, code) => {
    socket.write(`${line}\r\n`);
    const answer = await reply();
    if (!answer.startsWith(code)) throw new Error(`${line} -> ${answer}`);
  };
  if (!(await reply()).startsWith("220")) throw new Error("no greeting");
  await command("EHLO inbox-test", "250");
  await command(`MAIL FROM:<${from}>`, "250");
  for (const rcpt of to) await command(`RCPT TO:<${rcpt}>`, "250");
  await command("DATA", "354");
  const stuffed = raw.replace(/\r\n\./g, "\r\n..");
  await command(`${stuffed}\r\n.`, "250");
  await command("QUIT", "221");
  socket.end();
}

/** A MIME message with a text part, an HTML part and optionally a PDF attachment. */
export function htmlMail({ subject, html, text = "text version", to = "dev@example.org", attachment }) {
  const parts = [
    'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n' +
      `--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n${text}\r\n` +
      `--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n${html}\r\n--alt--`,
  ];
  if (attachment) {
    parts.push(
      `Content-Type: application/pdf; name="${attachment.name}"\r\n` +
        `Content-Disposition: attachment; filename="${attachment.name}"\r\n` +
        `Content-Transfer-Encoding: base64\r\n\r\n${Buffer.from(attachment.bytes).toString("base64")}`,
    );
  }
  return (
    `From: App <app@example.com>\r\nTo: ${to}\r\nCc: team@example.org\r\nSubject: ${subject}\r\n` +
    `MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="mix"\r\n\r\n` +
    parts.map((p) => `--mix\r\n${p}\r\n`).join("") +
    "--mix--\r\n"
  );
}
