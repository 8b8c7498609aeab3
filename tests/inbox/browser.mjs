// The web inbox in a real browser: Debian's Chromium driven by Playwright (playwright-core, no
// downloaded browser). Covers the list, live updates, opening a message, the HTML sandbox (a
// <script> and an onerror inside a message must not run), remote images, attachment download,
// keyboard use, delete and release through the fake Google. With INBOX_SCREENSHOT=FILE it also
// saves the screenshot used in the README.
import { readFileSync } from "node:fs";
import http from "node:http";
import { chromium } from "playwright-core";
import { check, fakeGoogle, finish, htmlMail, sendMail, server, step } from "./harness.mjs";

const HOSTILE = `<h2 id="greeting">Hello developer</h2>
<p>Your code is <b>48213</b>. <a id="link" href="https://example.com/confirm" target="_self">Confirm</a></p>
<img id="remote" src="REMOTE" alt="remote image">
<script>document.getElementById("greeting").textContent = "SCRIPT RAN"; top.document.title = "pwned";</script>
<img src="data:," onerror="document.getElementById('greeting').textContent = 'ONERROR RAN'">`;
const PDF = "%PDF-1.4\n% the invoice\n";

const google = await fakeGoogle(process.env.WORK);
const inbox = await server(`[gmail]\ncredentials = '${process.env.WORK}/token.json'\napi_base = "${google.apiBase}"\n`);
const send = (subject, options = {}) =>
  sendMail(inbox.smtpPort, "app@example.com", [options.to || "dev@example.org"], htmlMail({ subject, ...options }));

await send("Welcome to Acme", { html: "<p>Welcome aboard!</p>" });
await send("Invoice 1042", { html: "<p>Your invoice is attached.</p>", attachment: { name: "invoice-1042.pdf", bytes: PDF } });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
const pageErrors = [];
page.on("pageerror", (error) => pageErrors.push(String(error)));
// A "remote" image: a server of its own on another port, so another site that answers when it is
// allowed to be asked (the inbox itself refuses what other sites' pages load from it).
const pixels = http.createServer((request, response) => {
  response.writeHead(200, { "Content-Type": "image/svg+xml" });
  response.end('<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>');
});
await new Promise((resolve) => pixels.listen(0, "127.0.0.1", resolve));
const REMOTE = `http://127.0.0.1:${pixels.address().port}/pixel.svg?remote-image`;
const loaded = [];
context.on("response", (response) => loaded.push(response.url()));
// Read-state changes the page asks for (opening a message must ask, not rely on the GET).
const readRequests = [];
page.on("request", (request) => {
  if (request.method() === "PUT" && new URL(request.url()).pathname === "/api/v1/messages") readRequests.push(JSON.parse(request.postData() || "{}"));
});
const rows = page.locator("#list .item");
const subjects = () => rows.locator(".subject").allTextContents();

await step("list", async () => {
  await page.goto(inbox.http + "/");
  await page.waitForSelector("#live.on");
  await rows.first().waitFor();
  check("list: newest first", JSON.stringify(await subjects()) === JSON.stringify(["Invoice 1042", "Welcome to Acme"]), JSON.stringify(await subjects()));
  check("list: unread marked", (await page.locator("#list .item.unread").count()) === 2);
  check("list: attachment marker", (await rows.first().locator(".clip").count()) === 1);
  check("list: counts shown", (await page.textContent("#counts")).includes("2 messages, 2 unread"));
});

await step("live update", async () => {
  await send("Password reset", { html: HOSTILE.replace("REMOTE", REMOTE), text: "Your code is 48213" });
  await page.locator("#list .item", { hasText: "Password reset" }).waitFor({ timeout: 10000 });
  check("live update: a new message appears without reloading", (await subjects())[0] === "Password reset");
});

await step("open and sandbox", async () => {
  await rows.filter({ hasText: "Password reset" }).click();
  await page.waitForSelector("#message-pane:not([hidden])");
  check("open: subject shown", (await page.textContent("#subject")) === "Password reset");
  check("open: sender shown", (await page.textContent("#meta")).includes("App <app@example.com>"));
  check("open: marked read with PUT /api/v1/messages", readRequests.some((r) => r.Read === true && r.IDs && r.IDs.length === 1), JSON.stringify(readRequests));
  const sandbox = await page.getAttribute("#html-frame", "sandbox");
  check("sandbox: iframe without allow-scripts or allow-same-origin", !/allow-scripts|allow-same-origin/.test(sandbox), sandbox);
  const frame = page.frameLocator("#html-frame");
  await frame.locator("#greeting").waitFor();
  const greeting = await frame.locator("#greeting").textContent();
  check("sandbox: the message HTML is shown", greeting.includes("Hello developer") || greeting.includes("RAN"), greeting);
  check("sandbox: <script> and onerror in the message did not run", greeting === "Hello developer", greeting);
  check("sandbox: the page title is untouched", !(await page.title()).includes("pwned"), await page.title());
  const link = frame.locator("#link");
  check("links open in a new tab with noopener", (await link.getAttribute("target")) === "_blank" && (await link.getAttribute("rel")).includes("noopener"));
  const response = await page.request.get(`${inbox.http}/view/latest.html?embed=1`);
  const policy = response.headers()["content-security-policy"] || "";
  check("the message HTML has a sandboxing CSP", policy.startsWith("sandbox") && !policy.includes("allow-scripts"), policy);
  const pagePolicy = (await page.request.get(`${inbox.http}/`)).headers()["content-security-policy"] || "";
  check("the inbox page has a CSP", pagePolicy.includes("script-src 'self'"), pagePolicy);
  // Once the message document has loaded, every image it may fetch has been fetched.
  await page.frames().find((f) => f.url().includes("/view/")).waitForLoadState("load");
  check("remote images are blocked by default", !loaded.some((u) => u.includes("remote-image")), loaded.join(" "));
  const remote = page.waitForResponse((r) => r.url().includes("remote-image"), { timeout: 10000 });
  await page.check("#images");
  const answer = await remote.catch(() => null);
  check("remote images load after the switch", answer !== null && answer.status() === 200, loaded.join(" "));
  await page.uncheck("#images");
  await page.click("#tab-text");
  check("text tab", (await page.textContent("#panel-text")).includes("Your code is 48213"));
  await page.click("#tab-headers");
  await page.locator("#headers-table th", { hasText: "Subject" }).waitFor();
  check("headers tab", (await page.textContent("#headers-table")).includes("Password reset"));
  await page.click("#tab-raw");
  await page.waitForFunction(() => document.getElementById("panel-raw").textContent.includes("Content-Type"));
  check("raw tab", (await page.textContent("#panel-raw")).includes("<script>"));
});

await step("attachment download", async () => {
  await rows.filter({ hasText: "Invoice 1042" }).click();
  await page.locator("#attachments a", { hasText: "invoice-1042.pdf" }).waitFor();
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#attachments a")]);
  const bytes = readFileSync(await download.path(), "utf8");
  check("attachment download: the file's bytes", bytes === PDF, JSON.stringify(bytes));
  check("attachment download: its name", download.suggestedFilename() === "invoice-1042.pdf", download.suggestedFilename());
  const [eml] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  check(".eml download", eml.suggestedFilename().endsWith(".eml") && readFileSync(await eml.path(), "utf8").includes("Subject: Invoice 1042"));
});

await step("keyboard", async () => {
  await page.keyboard.press("Escape");
  await page.keyboard.press("/");
  check("keyboard: / focuses the search", await page.evaluate(() => document.activeElement.id === "search"));
  await page.keyboard.type("subject:welcome");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelectorAll("#list .item").length === 1);
  check("search from the page", JSON.stringify(await subjects()) === JSON.stringify(["Welcome to Acme"]));
  await page.fill("#search", "");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelectorAll("#list .item").length === 3);
  await page.locator("#list").focus();
  await page.keyboard.press("j");
  await page.keyboard.press("j");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.getElementById("subject").textContent === "Invoice 1042");
  check("keyboard: j j Enter opens the second message", true);
});

await step("release", async () => {
  await page.click("#release");
  await page.fill("#release-to", "qa@example.org");
  await page.click("#release-send");
  await page.waitForFunction(() => /Sent to|Gmail/.test(document.getElementById("release-result").textContent), null, { timeout: 30000 });
  const result = await page.textContent("#release-result");
  check("release: the page shows Gmail's id", result.includes("fake-gmail-1"), result);
  const upload = JSON.parse(await google.uploads.wait('"fake-gmail-1"'));
  check("release: Gmail got it for exactly the given recipient", JSON.stringify(upload.recipients) === '["qa@example.org"]', JSON.stringify(upload));
  await page.click("#release-cancel");
});

await step("delete", async () => {
  const before = (await subjects()).length;
  await page.click("#delete");
  await page.waitForFunction((n) => document.querySelectorAll("#list .item").length === n - 1, before);
  check("delete: the message is gone from the list", !(await subjects()).includes("Invoice 1042"));
  const list = await (await page.request.get(`${inbox.http}/api/v1/messages`)).json();
  check("delete: and from the inbox", list.total === before - 1, JSON.stringify(list.total));
});

await step("phone layout", async () => {
  await page.setViewportSize({ width: 390, height: 800 });
  await rows.first().click();
  await page.locator("#list-pane").waitFor({ state: "hidden" });
  check("phone: the message replaces the list", await page.isVisible("#back"));
  await page.click("#back");
  await page.locator("#list-pane").waitFor();
  check("phone: back to the list", !(await page.isVisible("#message-pane")));
  await page.setViewportSize({ width: 1280, height: 800 });
});

await step("release off: the dialog says how to turn it on, commands shown as code", async () => {
  const plain = await server();
  await sendMail(plain.smtpPort, "app@example.com", ["dev@example.org"], htmlMail({ subject: "No release here", html: "<p>hi</p>" }));
  const other = await context.newPage();
  other.on("pageerror", (error) => pageErrors.push(String(error)));
  await other.goto(`${plain.http}/`);
  await other.locator("#list .item", { hasText: "No release here" }).click();
  await other.waitForFunction(() => document.getElementById("subject").textContent === "No release here");
  await other.click("#release");
  const help = other.locator("#release-help");
  await help.waitFor();
  const text = await help.textContent();
  check("release off: the help names the command", text.includes("smtp2gmail authorize"), text);
  check("release off: no raw backticks", !text.includes("`"), text);
  check("release off: the command is code", (await help.locator("code").count()) > 0, await help.innerHTML());
  await other.close();
});

await step("tags and chaos", async () => {
  const chaotic = await server("[inbox]\nchaos = true\n");
  const tagged = "X-Tags: alpha, beta\r\n" + htmlMail({ subject: "Tagged mail", html: "<p>tags</p>" });
  await sendMail(chaotic.smtpPort, "app@example.com", ["dev@example.org"], tagged);
  const other = await context.newPage();
  other.on("pageerror", (error) => pageErrors.push(String(error)));
  await other.goto(`${chaotic.http}/`);
  const row = other.locator("#list .item", { hasText: "Tagged mail" });
  await row.waitFor();
  check("tags: shown in the list", JSON.stringify(await row.locator(".tag").allTextContents()) === '["alpha","beta"]', await row.innerHTML());
  await row.click();
  const tagList = other.locator("#tag-list .tag");
  await tagList.first().waitFor();
  check("tags: shown with the message", (await tagList.count()) === 2);
  await other.fill("#tag-add", "gamma");
  await other.press("#tag-add", "Enter");
  await other.waitForFunction(() => document.querySelectorAll("#tag-list .tag").length === 3);
  const id = (await (await other.request.get(`${chaotic.http}/api/v1/messages`)).json()).messages[0].ID;
  const tagsNow = async () => (await (await other.request.get(`${chaotic.http}/api/v1/message/${id}`)).json()).Tags;
  check("tags: added in the page", JSON.stringify(await tagsNow()) === '["alpha","beta","gamma"]');
  await other.click("#tag-list .tag-remove >> nth=0");
  await other.waitForFunction(() => document.querySelectorAll("#tag-list .tag").length === 2);
  check("tags: removed in the page", JSON.stringify(await tagsNow()) === '["beta","gamma"]');
  // The list row follows through the WebSocket's update event, which may arrive after the API
  // already answers with the new tags: wait for it (bounded) rather than read it at once.
  const rowFollows = await other
    .waitForFunction(() => {
      const item = [...document.querySelectorAll("#list .item")].find((e) => e.textContent.includes("Tagged mail"));
      return item && JSON.stringify([...item.querySelectorAll(".tag")].map((t) => t.textContent)) === '["beta","gamma"]';
    }, null, { timeout: 10000 })
    .then(() => true, () => false);
  check("tags: the list row follows", rowFollows, await row.innerHTML());
  check("chaos: not shown while no trigger is set", await other.isHidden("#chaos"));
  const set = await other.request.put(`${chaotic.http}/api/v1/chaos`, { data: { Recipient: { ErrorCode: 451, Probability: 100 } } });
  check("chaos: set through the API", set.status() === 200, await set.text());
  await other.locator("#chaos").waitFor({ timeout: 15000 });
  check("chaos: the page says chaos is active", (await other.textContent("#chaos")).includes("Chaos active"));
  check("chaos: and which trigger", (await other.getAttribute("#chaos", "title")).includes("Recipient: 451 at 100 %"));
  await other.close();
});

await step("staging: auto-release shown, blocked refused, the release address remembered", async () => {
  const staging = await server(
    `[gmail]\ncredentials = '${process.env.WORK}/token.json'\napi_base = "${google.apiBase}"\n` +
      `[inbox]\nrelease_matching = '@team\\.example$'\nrelease_blocked = ["boss@team.example"]\n`,
  );
  await sendMail(staging.smtpPort, "app@example.com", ["dev@team.example", "customer@example.org"], htmlMail({ subject: "Staging order", html: "<p>ok</p>", to: "dev@team.example" }));
  const upload = JSON.parse(await google.uploads.wait('"dev@team.example"'));
  check("staging: the team member's copy went out alone", JSON.stringify(upload.recipients) === '["dev@team.example"]', JSON.stringify(upload));
  const other = await context.newPage();
  other.on("pageerror", (error) => pageErrors.push(String(error)));
  await other.goto(`${staging.http}/`);
  const note = other.locator("#auto-release");
  await note.waitFor();
  check("staging: the header shows the rule", (await note.textContent()).includes("@team\\.example$"), await note.textContent());
  await other.locator("#list .item", { hasText: "Staging order" }).click();
  await other.waitForFunction(() => document.getElementById("subject").textContent === "Staging order");
  await other.click("#release");
  const rules = await other.textContent("#release-rules");
  check("staging: the dialog names the rule and the blocklist", rules.includes("released on its own") && rules.includes("boss@team"), rules);
  await other.fill("#release-to", "boss@team.example");
  await other.click("#release-send");
  await other.waitForFunction(() => /blocklist/.test(document.getElementById("release-result").textContent));
  check("staging: a blocked address is refused", (await other.textContent("#release-result")).includes("Failed: Address found on blocklist"));
  await other.fill("#release-to", "qa@example.org");
  await other.click("#release-send");
  await other.waitForFunction(() => /^Sent to/.test(document.getElementById("release-result").textContent), null, { timeout: 30000 });
  await other.click("#release-cancel");
  await other.click("#release");
  check("staging: the next release starts with the last address", (await other.inputValue("#release-to")) === "qa@example.org");
  await other.click("#release-cancel");
  await other.close();
});

check("no script errors in the page", pageErrors.length === 0, pageErrors.join("; "));

if (process.env.INBOX_SCREENSHOT) {
  await send("Your order has shipped", { html: "<h2>On its way</h2><p>Order <b>#5521</b> left our warehouse today.</p>" });
  await page.locator("#list .item", { hasText: "Your order has shipped" }).waitFor();
  await rows.filter({ hasText: "Your order has shipped" }).click();
  await page.click("#tab-html");
  await page.frameLocator("#html-frame").locator("h2").waitFor();
  await page.evaluate(() => (document.getElementById("toast").hidden = true));
  await page.screenshot({ path: process.env.INBOX_SCREENSHOT });
  console.log(`screenshot: ${process.env.INBOX_SCREENSHOT}`);
}

await browser.close();
pixels.close();
finish();
