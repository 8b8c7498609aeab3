// A real Mailpit client library from npm (mailpit-api, "A TypeScript client for interacting with
// Mailpit's REST API"), unchanged, against smtp2gmail's inbox: every call it makes for what the
// inbox does must work and give Mailpit's answers.
import { MailpitClient } from "mailpit-api";
import { check, fakeGoogle, finish, htmlMail, sendMail, server, step } from "./harness.mjs";

const PDF = "%PDF-1.4\n% client test\n";
const google = await fakeGoogle(process.env.WORK);
const inbox = await server(
  `[gmail]\ncredentials = '${process.env.WORK}/token.json'\napi_base = "${google.apiBase}"\n[inbox]\nchaos = true\n`,
);
const mailpit = new MailpitClient(inbox.http);
const send = (subject, to, options = {}) =>
  sendMail(inbox.smtpPort, "app@example.com", [to, "hidden@example.org"], htmlMail({ subject, to, ...options }));

await send("Welcome Alice", "alice@example.org", { html: "<p>Hi Alice</p>", text: "code 111-AAA" });
await send("Invoice for Bob", "bob@example.org", { html: "<p>Invoice</p>", attachment: { name: "invoice.pdf", bytes: PDF } });
await send("Reset for Carol", "carol@example.org", { html: "<p>Reset</p>", text: "code 333-CCC" });

await step("getInfo", async () => {
  const info = await mailpit.getInfo();
  check("getInfo: message count", info.Messages === 3, JSON.stringify(info));
  check("getInfo: version", typeof info.Version === "string" && info.Version.length > 0);
});

await step("getConfiguration", async () => {
  const config = await mailpit.getConfiguration();
  check("getConfiguration: release enabled", config.MessageRelay.Enabled === true, JSON.stringify(config));
});

let ids = [];
await step("listMessages", async () => {
  const list = await mailpit.listMessages();
  ids = list.messages.map((m) => m.ID);
  check("listMessages: totals", list.total === 3 && list.unread === 3 && list.messages_count === 3, JSON.stringify(list).slice(0, 300));
  check("listMessages: newest first", list.messages[0].Subject === "Reset for Carol" && list.messages[2].Subject === "Welcome Alice");
  const page = await mailpit.listMessages(1, 1);
  check("listMessages(start, limit)", page.messages.length === 1 && page.messages[0].Subject === "Invoice for Bob" && page.start === 1);
  const bob = list.messages[1];
  check("listMessages: To, Bcc from the envelope, attachments", bob.To[0].Address === "bob@example.org" && bob.Bcc[0].Address === "hidden@example.org" && bob.Attachments === 1, JSON.stringify(bob));
});

await step("searchMessages", async () => {
  const bySubject = await mailpit.searchMessages({ query: "subject:invoice" });
  check("searchMessages subject:", bySubject.messages_count === 1 && bySubject.messages[0].Subject === "Invoice for Bob");
  const byTo = await mailpit.searchMessages({ query: "to:carol" });
  check("searchMessages to:", byTo.messages_count === 1 && byTo.messages[0].Subject === "Reset for Carol");
  const byWord = await mailpit.searchMessages({ query: "111-AAA" });
  check("searchMessages body word", byWord.messages_count === 1 && byWord.messages[0].Subject === "Welcome Alice");
  const phrase = await mailpit.searchMessages({ query: '"for bob"' });
  check("searchMessages phrase", phrase.messages_count === 1);
});

await step("waitForMessage", async () => {
  const message = await mailpit.waitForMessage({ query: "subject:welcome" });
  check("waitForMessage", message.Subject === "Welcome Alice" && message.Text.includes("111-AAA"), JSON.stringify(message).slice(0, 200));
});

await step("getMessageSummary", async () => {
  const latest = await mailpit.getMessageSummary();
  check("getMessageSummary(): latest", latest.Subject === "Reset for Carol" && latest.HTML.includes("Reset"));
  const bob = await mailpit.getMessageSummary(ids[1]);
  const pdf = bob.Attachments[0];
  check("getMessageSummary: attachments", pdf.FileName === "invoice.pdf" && pdf.ContentType === "application/pdf" && pdf.Size === PDF.length, JSON.stringify(bob.Attachments));
  const blob = await mailpit.getMessageAttachment(ids[1], pdf.PartID);
  check("getMessageAttachment", (await blob.text()) === PDF && blob.type === "application/pdf", blob.type);
  const headers = await mailpit.getMessageHeaders(ids[1]);
  check("getMessageHeaders", headers.Subject[0] === "Invoice for Bob" && Array.isArray(headers.To), JSON.stringify(headers).slice(0, 200));
  const source = await mailpit.getMessageSource(ids[1]);
  check("getMessageSource", source.startsWith("From: App <app@example.com>") && source.includes("invoice.pdf"));
  const html = await mailpit.renderMessageHTML(ids[1]);
  check("renderMessageHTML", html.includes("<p>Invoice</p>"));
  const text = await mailpit.renderMessageText(ids[1]);
  check("renderMessageText", text.includes("text version"));
  check("getTags", JSON.stringify(await mailpit.getTags()) === "[]");
});

await step("setReadStatus", async () => {
  await mailpit.setReadStatus({ Read: false });
  check("setReadStatus(): all unread", (await mailpit.listMessages()).unread === 3);
  await mailpit.setReadStatus({ IDs: [ids[0]], Read: true });
  check("setReadStatus IDs", (await mailpit.listMessages()).unread === 2);
  await mailpit.setReadStatus({ Search: "to:alice", Read: true });
  check("setReadStatus Search", (await mailpit.listMessages()).unread === 1);
});

await step("releaseMessage", async () => {
  const answer = await mailpit.releaseMessage(ids[1], { To: ["qa@example.org"] });
  check("releaseMessage: ok", answer === "ok", answer);
  const upload = JSON.parse(await google.uploads.wait('"fake-gmail-1"'));
  check("releaseMessage: Gmail got it for exactly the given recipient", JSON.stringify(upload.recipients) === '["qa@example.org"]', JSON.stringify(upload));
});

await step("tags", async () => {
  await mailpit.setTags({ IDs: [ids[0], ids[1]], Tags: ["Release", "qa"] });
  check("setTags / getTags", JSON.stringify(await mailpit.getTags()) === '["Release","qa"]');
  const tagged = await mailpit.searchMessages({ query: "tag:qa" });
  check("search tag:", tagged.messages_count === 2 && JSON.stringify(tagged.messages[0].Tags) === '["Release","qa"]', JSON.stringify(tagged.messages.map((m) => m.Tags)));
  check("listMessages tags", JSON.stringify((await mailpit.listMessages()).tags) === '["Release","qa"]');
  await mailpit.renameTag("qa", "checked");
  check("renameTag", JSON.stringify(await mailpit.getTags()) === '["Release","checked"]');
  await mailpit.deleteTag("Release");
  check("deleteTag", JSON.stringify(await mailpit.getTags()) === '["checked"]');
  await mailpit.setTags({ IDs: [ids[1]] });
  check("setTags without Tags removes them", (await mailpit.searchMessages({ query: "tag:checked" })).messages_count === 1);
});

await step("chaos", async () => {
  const defaults = await mailpit.getChaosTriggers();
  check("getChaosTriggers", defaults.Recipient.ErrorCode === 451 && defaults.Authentication.ErrorCode === 535 && defaults.Sender.Probability === 0, JSON.stringify(defaults));
  const set = await mailpit.setChaosTriggers({ Recipient: { ErrorCode: 550, Probability: 100 } });
  check("setChaosTriggers", set.Recipient.ErrorCode === 550 && set.Recipient.Probability === 100 && set.Sender.Probability === 0, JSON.stringify(set));
  const refused = await send("Refused by chaos", "dave@example.org").then(() => "accepted", (error) => error.message);
  check("chaos: RCPT answered 550", refused.includes("550"), refused);
  const reset = await mailpit.setChaosTriggers();
  check("setChaosTriggers(): reset", reset.Recipient.Probability === 0, JSON.stringify(reset));
  check("chaos: nothing captured", (await mailpit.searchMessages({ query: "subject:refused" })).messages_count === 0);
});

await step("sendMessage", async () => {
  const sent = await mailpit.sendMessage({
    From: { Email: "api@example.com", Name: "API" },
    To: [{ Email: "erin@example.org", Name: "Erin" }],
    Bcc: ["audit@example.org"],
    Subject: "Sent with sendMessage",
    Text: "text from the API",
    HTML: "<p>html from the API</p>",
    Attachments: [{ Content: Buffer.from(PDF).toString("base64"), Filename: "sent.pdf", ContentType: "application/pdf" }],
    Tags: ["api"],
  });
  check("sendMessage: an ID", typeof sent.ID === "string" && sent.ID.length > 0, JSON.stringify(sent));
  const message = await mailpit.getMessageSummary(sent.ID);
  check("sendMessage: captured", message.Subject === "Sent with sendMessage" && message.To[0].Address === "erin@example.org" && message.Bcc[0].Address === "audit@example.org", JSON.stringify(message).slice(0, 300));
  check("sendMessage: parts and tags", message.HTML.includes("html from the API") && message.Attachments[0].FileName === "sent.pdf" && JSON.stringify(message.Tags) === '["api"]');
  await mailpit.setReadStatus({ IDs: [sent.ID], Read: false });
  check("setReadStatus: unread again", (await mailpit.searchMessages({ query: "is:unread subject:sendMessage" })).messages_count === 1);
  await mailpit.deleteMessagesBySearch({ query: "tag:api" });
  check("deleteMessagesBySearch tag:", (await mailpit.searchMessages({ query: "subject:sendMessage" })).messages_count === 0);
});

await step("deleteMessages", async () => {
  await mailpit.deleteMessagesBySearch({ query: "subject:welcome" });
  check("deleteMessagesBySearch", (await mailpit.listMessages()).total === 2);
  await mailpit.deleteMessages({ IDs: [ids[0]] });
  const left = await mailpit.listMessages();
  check("deleteMessages IDs", left.total === 1 && left.messages[0].Subject === "Invoice for Bob");
  await mailpit.deleteMessages();
  check("deleteMessages(): all", (await mailpit.listMessages()).total === 0);
});

finish();
