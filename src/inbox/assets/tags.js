// The web inbox's tags and chaos state, beside app.js (loaded first, run by app.js's start()):
// the open message's tags, editable; the tag chips of the list; the "Chaos active" mark. Uses
// app.js's state and helpers at call time. Message data reaches the page as text only.
"use strict";

function tagChips(tags) {
  const chips = element("span", "tag-chips");
  for (const tag of tags) chips.append(element("span", "tag", tag));
  return chips;
}

// The open message's tags, each with a button that removes it.
function renderTags() {
  const list = $("tag-list");
  list.replaceChildren();
  const tags = (state.open && state.open.Tags) || [];
  for (const tag of tags) {
    const item = element("li", "tag", tag);
    const remove = element("button", "tag-remove", "×");
    remove.type = "button";
    remove.title = `Remove the tag ${tag}`;
    remove.setAttribute("aria-label", `Remove the tag ${tag}`);
    remove.addEventListener("click", () => setTags(tags.filter((t) => t !== tag)));
    item.append(remove);
    list.append(item);
  }
}

async function setTags(tags) {
  const message = state.open;
  if (!message) return;
  try {
    await api("PUT", "/api/v1/tags", { Tags: tags, IDs: [message.ID] });
  } catch (error) {
    toast(`Cannot set the tags: ${error.message}`, true);
  }
}

async function addTag(event) {
  event.preventDefault();
  const input = $("tag-add");
  const tag = input.value.trim();
  if (!tag || !state.open) return;
  input.value = "";
  await setTags([...(state.open.Tags || []), tag]);
}

// An `update` event with tags (Mailpit's): the row and the open message show them.
function tagsChanged(id, tags) {
  const row = state.messages.find((m) => m.ID === id);
  if (row) row.Tags = tags;
  if (state.open && state.open.ID === id) {
    state.open.Tags = tags;
    renderTags();
  }
  renderList();
}

// After a tag was renamed or deleted everywhere (`prune`), the open message's tags are read again.
async function refreshOpenTags() {
  if (!state.open) return;
  try {
    const message = await getJSON(`/api/v1/message/${encodeURIComponent(state.open.ID)}`);
    if (state.open && state.open.ID === message.ID) tagsChanged(message.ID, message.Tags);
  } catch {
    // The message is gone: its delete event closes it.
  }
}

// Chaos (inbox.chaos): the bar says when a trigger can fail SMTP commands. Triggers change through
// the API without an event, so they are read again every few seconds.
async function showChaos() {
  try {
    const triggers = await getJSON("/api/v1/chaos");
    const active = Object.entries(triggers).filter(([, t]) => t.Probability > 0);
    $("chaos").hidden = active.length === 0;
    $("chaos").title = active.map(([step, t]) => `${step}: ${t.ErrorCode} at ${t.Probability} %`).join("\n");
  } catch {
    $("chaos").hidden = true;
  }
}
