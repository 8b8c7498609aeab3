// The smtp2gmail web inbox: plain JavaScript over the Mailpit-compatible API (/api/v1) and its
// event WebSocket (/api/events). Message data only ever reaches the page through textContent and
// attributes, never as markup; message HTML is shown by the sandboxed iframe alone.
"use strict";

const PAGE = 50;
const $ = (id) => document.getElementById(id);

const state = {
  start: 0,
  query: "",
  messages: [],
  total: 0,
  unread: 0,
  matching: 0,
  selected: -1,     // index of the highlighted row
  open: null,       // the open message (API JSON)
  tab: "html",
  images: false,
  relay: { Enabled: false, ReleaseHelp: "" },
};

// ---- API ------------------------------------------------------------------------------------

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (!response.ok) {
    const text = (await response.text()).trim();
    throw new Error(text || `${response.status} ${response.statusText}`);
  }
  return response;
}

const getJSON = async (path) => (await api("GET", path)).json();

// ---- formatting -----------------------------------------------------------------------------

function mailbox(m) {
  if (!m) return "";
  return m.Name ? `${m.Name} <${m.Address}>` : m.Address;
}

function shortMailbox(m) {
  return m ? m.Name || m.Address : "";
}

function mailboxes(list) {
  return (list || []).map(mailbox).join(", ");
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} kB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function when(iso) {
  const date = new Date(iso);
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

let toastTimer = 0;
function toast(text, isError) {
  const node = $("toast");
  node.textContent = text;
  node.classList.toggle("error", !!isError);
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (node.hidden = true), isError ? 8000 : 3000);
}

// ---- the list -------------------------------------------------------------------------------

async function loadList() {
  const paging = `start=${state.start}&limit=${PAGE}`;
  const path = state.query
    ? `/api/v1/search?query=${encodeURIComponent(state.query)}&${paging}`
    : `/api/v1/messages?${paging}`;
  try {
    const list = await getJSON(path);
    state.messages = list.messages;
    state.total = list.total;
    state.unread = list.unread;
    state.matching = list.messages_count;
    if (state.open) {
      state.selected = state.messages.findIndex((m) => m.ID === state.open.ID);
    }
    state.selected = Math.min(state.selected, state.messages.length - 1);
    renderList();
  } catch (error) {
    toast(`Cannot load messages: ${error.message}`, true);
  }
}

function renderList() {
  const list = $("list");
  list.replaceChildren();
  state.messages.forEach((m, i) => {
    const item = element("li", "item");
    item.setAttribute("role", "option");
    item.id = `message-${m.ID}`;
    item.dataset.id = m.ID;
    item.classList.toggle("unread", !m.Read);
    item.classList.toggle("selected", i === state.selected);
    item.classList.toggle("open", !!state.open && state.open.ID === m.ID);
    item.setAttribute("aria-selected", String(i === state.selected));
    const top = element("div", "row");
    top.append(element("span", "from", shortMailbox(m.From) || "(no sender)"));
    top.append(element("time", "time", when(m.Created)));
    const middle = element("div", "row");
    middle.append(element("span", "subject", m.Subject || "(no subject)"));
    if (m.Attachments > 0) {
      const clip = element("span", "clip", m.Attachments === 1 ? "1 file" : `${m.Attachments} files`);
      clip.title = `${m.Attachments} attachment(s)`;
      middle.append(clip);
    }
    if (m.Tags && m.Tags.length) middle.append(tagChips(m.Tags));
    const bottom = element("div", "row small");
    bottom.append(element("span", "to", `To: ${(m.To || []).map(shortMailbox).join(", ")}`));
    bottom.append(element("span", "size", size(m.Size)));
    const snippet = element("div", "snippet", m.Snippet);
    item.append(top, middle, bottom, snippet);
    item.addEventListener("click", () => {
      state.selected = i;
      openMessage(m.ID);
    });
    list.append(item);
  });
  if (state.selected >= 0) list.setAttribute("aria-activedescendant", `message-${state.messages[state.selected].ID}`);
  else list.removeAttribute("aria-activedescendant");
  $("empty").hidden = state.messages.length > 0;
  $("empty").textContent = state.query
    ? "No message matches this search."
    : "No messages yet. Send mail to the SMTP port and it appears here at once.";
  const shown = state.query ? state.matching : state.total;
  const last = Math.min(state.start + state.messages.length, shown);
  $("range").textContent = shown ? `${state.start + 1}–${last} of ${shown}` : "";
  $("prev").disabled = state.start === 0;
  $("next").disabled = state.start + PAGE >= shown;
  $("counts").textContent = `${state.total} messages, ${state.unread} unread`;
  document.title = state.unread ? `(${state.unread}) smtp2gmail inbox` : "smtp2gmail inbox";
  $("delete-all").textContent = state.query ? "Delete results" : "Delete all";
  $("delete-all").disabled = shown === 0;
  const selected = list.children[state.selected];
  if (selected) selected.scrollIntoView({ block: "nearest" });
}

function select(index) {
  if (!state.messages.length) return;
  state.selected = Math.max(0, Math.min(index, state.messages.length - 1));
  renderList();
}

function page(delta) {
  const shown = state.query ? state.matching : state.total;
  const start = state.start + delta * PAGE;
  if (start < 0 || start >= Math.max(shown, 1)) return;
  state.start = start;
  state.selected = 0;
  loadList();
}

// ---- one message ----------------------------------------------------------------------------

async function openMessage(id) {
  let message;
  try {
    message = await getJSON(`/api/v1/message/${encodeURIComponent(id)}`);
  } catch (error) {
    toast(`Cannot open the message: ${error.message}`, true);
    return;
  }
  state.open = message;
  const row = state.messages.find((m) => m.ID === id);
  if (!row || !row.Read) {
    // Marked read by asking for it: the page does not rely on the GET's side effect (kept for
    // Mailpit's clients, refused to other sites' pages).
    try {
      await api("PUT", "/api/v1/messages", { IDs: [message.ID], Read: true });
      if (row && !row.Read) {
        row.Read = true;
        state.unread = Math.max(0, state.unread - 1);
      }
    } catch (error) {
      toast(`Cannot mark the message read: ${error.message}`, true);
    }
  }
  document.body.classList.add("reading");
  $("message-pane").hidden = false;
  $("subject").textContent = message.Subject || "(no subject)";
  const meta = $("meta");
  meta.replaceChildren();
  const field = (name, value) => {
    if (!value) return;
    meta.append(element("dt", "", name), element("dd", "", value));
  };
  field("From", mailbox(message.From));
  field("To", mailboxes(message.To));
  field("Cc", mailboxes(message.Cc));
  field("Bcc", mailboxes(message.Bcc));
  field("Reply-To", mailboxes(message.ReplyTo));
  field("Date", new Date(message.Date).toLocaleString());
  field("Size", size(message.Size));
  const attachments = $("attachments");
  attachments.replaceChildren();
  for (const part of [...message.Attachments, ...message.Inline]) {
    const link = element("a", "attachment", part.FileName || part.ContentID || `part ${part.PartID}`);
    link.href = `/api/v1/message/${encodeURIComponent(id)}/part/${encodeURIComponent(part.PartID)}`;
    link.download = part.FileName || part.ContentID || `part-${part.PartID}`;
    link.title = `${part.ContentType}, ${size(part.Size)}`;
    const item = element("li");
    item.append(link, element("span", "small", ` ${part.ContentType}, ${size(part.Size)}`));
    attachments.append(item);
  }
  $("download").href = `/api/v1/message/${encodeURIComponent(id)}/raw?dl=1`;
  $("download").download = `${id}.eml`;
  $("toggle-read").textContent = "Mark unread";
  renderTags();
  $("tab-html").disabled = !message.HTML;
  showTab(message.HTML ? state.tab : state.tab === "html" ? "text" : state.tab);
  renderList();
}

function closeMessage() {
  state.open = null;
  document.body.classList.remove("reading");
  $("message-pane").hidden = true;
  $("html-frame").removeAttribute("src");
  renderList();
  $("list").focus();
}

async function showTab(tab) {
  const message = state.open;
  if (!message) return;
  if (tab === "html" && !message.HTML) tab = "text";
  state.tab = tab;
  for (const name of ["html", "text", "headers", "raw"]) {
    const button = $(`tab-${name}`);
    button.setAttribute("aria-selected", String(name === tab));
    button.tabIndex = name === tab ? 0 : -1;
    $(`panel-${name}`).hidden = name !== tab;
  }
  const id = encodeURIComponent(message.ID);
  if (tab === "html") {
    const src = `/view/${id}.html?embed=1${state.images ? "&images=1" : ""}`;
    if ($("html-frame").getAttribute("src") !== src) $("html-frame").src = src;
  } else if (tab === "text") {
    $("panel-text").textContent = message.Text || "(no text part)";
  } else if (tab === "headers") {
    const headers = await getJSON(`/api/v1/message/${id}/headers`);
    const body = $("headers-table").tBodies[0];
    body.replaceChildren();
    for (const [name, values] of Object.entries(headers)) {
      for (const value of values) {
        const row = element("tr");
        row.append(element("th", "", name), element("td", "", value));
        body.append(row);
      }
    }
  } else if (tab === "raw") {
    $("panel-raw").textContent = await (await api("GET", `/api/v1/message/${id}/raw`)).text();
  }
}

// ---- actions --------------------------------------------------------------------------------

async function deleteOpenOrSelected() {
  const message = state.open || state.messages[state.selected];
  if (!message) return;
  try {
    await api("DELETE", "/api/v1/messages", { IDs: [message.ID] });
  } catch (error) {
    toast(`Not deleted: ${error.message}`, true);
    return;
  }
  const index = state.messages.findIndex((m) => m.ID === message.ID);
  if (index >= 0) state.messages.splice(index, 1);
  if (state.open && state.open.ID === message.ID) closeMessage();
  toast("Message deleted");
  await loadList();
}

async function deleteAll() {
  const what = state.query ? `the ${state.matching} messages matching “${state.query}”` : `all ${state.total} messages`;
  if (!confirm(`Delete ${what}?`)) return;
  try {
    if (state.query) await api("DELETE", `/api/v1/search?query=${encodeURIComponent(state.query)}`);
    else await api("DELETE", "/api/v1/messages", { IDs: [] });
  } catch (error) {
    toast(`Not deleted: ${error.message}`, true);
    return;
  }
  if (state.open) closeMessage();
  state.start = 0;
  await loadList();
}

async function setRead(ids, read) {
  const body = ids ? { IDs: ids, Read: read } : state.query ? { Search: state.query, Read: read } : { Read: read };
  try {
    await api("PUT", "/api/v1/messages", body);
  } catch (error) {
    toast(`Cannot change the read state: ${error.message}`, true);
  }
  await loadList();
}

async function toggleRead() {
  const message = state.open || state.messages[state.selected];
  if (!message) return;
  const row = state.messages.find((m) => m.ID === message.ID);
  const read = row ? !row.Read : false;
  await setRead([message.ID], read);
  if (state.open) $("toggle-read").textContent = read ? "Mark unread" : "Mark read";
}

/** Shows a server's sentence in `element`: `command` spans (as the server writes commands and
 *  config keys) become <code>, everything else stays text (never HTML). */
function showSentence(element, text) {
  element.replaceChildren(
    ...text.split("`").map((piece, i) => {
      if (i % 2 === 0) return document.createTextNode(piece);
      const code = document.createElement("code");
      code.textContent = piece;
      return code;
    }),
  );
}

function openRelease() {
  if (!state.open) return;
  const dialog = $("release-dialog");
  const enabled = state.relay.MessageRelay && state.relay.MessageRelay.Enabled;
  showSentence(
    $("release-help"),
    enabled
      ? `Sent through the ${state.relay.MessageRelay.SMTPServer}. The message's own To, Cc and Bcc are replaced.`
      : state.relay.ReleaseHelp,
  );
  $("release-help").classList.toggle("error", !enabled);
  $("release-to").disabled = !enabled;
  $("release-send").disabled = !enabled;
  $("release-result").textContent = "";
  showReleaseRules();
  if (enabled) $("release-to").value = rememberedReleaseTo();
  dialog.showModal();
  if (enabled) $("release-to").focus();
}

async function sendRelease(event) {
  event.preventDefault();
  const to = $("release-to").value.split(/[,;\s]+/).map((s) => s.trim()).filter(Boolean);
  const result = $("release-result");
  result.classList.remove("error");
  if (!to.length) {
    result.textContent = "Give at least one address.";
    result.classList.add("error");
    return;
  }
  result.textContent = "Sending…";
  $("release-send").disabled = true;
  try {
    const response = await api("POST", `/api/v1/message/${encodeURIComponent(state.open.ID)}/release`, { To: to });
    const gmailId = response.headers.get("X-Gmail-Message-Id");
    result.textContent = `Sent to ${to.join(", ")}${gmailId ? ` (Gmail id ${gmailId})` : ""}.`;
    rememberReleaseTo(to);
  } catch (error) {
    showSentence(result, error.message);
    result.classList.add("error");
  } finally {
    $("release-send").disabled = false;
  }
}

// ---- live updates ---------------------------------------------------------------------------

let socket = null;
let retry = 500;
let reloadTimer = 0;

function reloadSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(loadList, 150);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/api/events`);
  socket.addEventListener("open", () => {
    retry = 500;
    $("live").classList.add("on");
    $("live").title = "Live updates: connected";
    loadList();
  });
  socket.addEventListener("close", () => {
    $("live").classList.remove("on");
    $("live").title = "Live updates: reconnecting…";
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  });
  socket.addEventListener("message", (event) => {
    let note;
    try {
      note = JSON.parse(event.data);
    } catch {
      return;
    }
    handle(note);
  });
}

function handle(note) {
  const data = note.Data || {};
  switch (note.Type) {
    case "new":
      if (state.start === 0 && !state.query && !state.messages.some((m) => m.ID === data.ID)) {
        state.messages.unshift(data);
        if (state.messages.length > PAGE) state.messages.pop();
        if (state.selected >= 0) state.selected += 1;
        state.total += 1;
        state.unread += 1;
        renderList();
      } else {
        reloadSoon();
      }
      break;
    case "update":
      if (data.Tags) {
        tagsChanged(data.ID, data.Tags);
        break;
      }
      reloadSoon();
      break;
    case "prune":
      refreshOpenTags();
      reloadSoon();
      break;
    case "delete":
    case "truncate":
      if (note.Type === "truncate" || (note.Type === "delete" && state.open && state.open.ID === data.ID)) {
        if (state.open) closeMessage();
      }
      reloadSoon();
      break;
    case "stats":
      state.total = data.Total;
      state.unread = data.Unread;
      $("counts").textContent = `${state.total} messages, ${state.unread} unread`;
      document.title = state.unread ? `(${state.unread}) smtp2gmail inbox` : "smtp2gmail inbox";
      break;
  }
}

// ---- keyboard -------------------------------------------------------------------------------

function onKey(event) {
  const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName) || $("release-dialog").open;
  if (typing) {
    if (event.key === "Escape" && event.target === $("search")) $("search").blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = {
    "/": () => $("search").focus(),
    j: () => select(state.selected + 1),
    ArrowDown: () => select(state.selected + 1),
    k: () => select(state.selected - 1),
    ArrowUp: () => select(state.selected - 1),
    Enter: () => state.messages[state.selected] && openMessage(state.messages[state.selected].ID),
    o: () => state.messages[state.selected] && openMessage(state.messages[state.selected].ID),
    Escape: () => state.open && closeMessage(),
    Delete: deleteOpenOrSelected,
    "#": deleteOpenOrSelected,
    u: toggleRead,
    r: openRelease,
    "[": () => page(-1),
    "]": () => page(1),
    1: () => showTab("html"),
    2: () => showTab("text"),
    3: () => showTab("headers"),
    4: () => showTab("raw"),
  };
  const action = actions[event.key];
  if (!action) return;
  // Keys inside a focused button or tab keep their own meaning.
  if (event.key === "Enter" && event.target.tagName === "BUTTON") return;
  event.preventDefault();
  action();
}

function onTabKey(event) {
  const order = ["html", "text", "headers", "raw"];
  const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
  if (!step) return;
  event.preventDefault();
  let index = order.indexOf(state.tab);
  do index = (index + step + order.length) % order.length;
  while ($(`tab-${order[index]}`).disabled);
  showTab(order[index]).then(() => $(`tab-${order[index]}`).focus());
}

// ---- start ----------------------------------------------------------------------------------

function start() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.query = $("search").value.trim();
    state.start = 0;
    state.selected = -1;
    loadList();
  });
  $("search").addEventListener("search", () => {
    if (!$("search").value) $("search-form").requestSubmit();
  });
  $("prev").addEventListener("click", () => page(-1));
  $("next").addEventListener("click", () => page(1));
  $("back").addEventListener("click", closeMessage);
  $("delete").addEventListener("click", deleteOpenOrSelected);
  $("delete-all").addEventListener("click", deleteAll);
  $("mark-all-read").addEventListener("click", () => setRead(null, true));
  $("toggle-read").addEventListener("click", toggleRead);
  $("release").addEventListener("click", openRelease);
  $("release-form").addEventListener("submit", sendRelease);
  $("release-cancel").addEventListener("click", () => $("release-dialog").close());
  $("images").addEventListener("change", () => {
    state.images = $("images").checked;
    if (state.open && state.tab === "html") showTab("html");
  });
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => showTab(tab.dataset.tab));
    tab.addEventListener("keydown", onTabKey);
  }
  document.addEventListener("keydown", onKey);
  $("tag-form").addEventListener("submit", addTag);
  getJSON("/api/v1/webui")
    .then((config) => {
      if (config.ChaosEnabled) {
        showChaos();
        setInterval(showChaos, 3000);
      }
      state.relay = config;
      if (!config.MessageRelay.Enabled) $("release").title = `Release is off: ${config.ReleaseHelp.replaceAll("`", "")}`;
      showAutoRelease(config);
    })
    .catch(() => {});
  loadList();
  connect();
}

start();
