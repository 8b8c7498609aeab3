// The web inbox's release rules, beside app.js (loaded first, used by app.js's release dialog
// and start()): the address of the last release remembered in this browser, the auto-release
// rule and the blocklist shown. Uses app.js's state and helpers at call time.
"use strict";

const RELEASE_TO_KEY = "smtp2gmail.releaseTo";

/** The addresses of the last release from this browser, else the server's default, else "". */
function rememberedReleaseTo() {
  let remembered = null;
  try {
    remembered = localStorage.getItem(RELEASE_TO_KEY);
  } catch {
    // Storage turned off: no default.
  }
  return remembered || (state.relay.MessageRelay && state.relay.MessageRelay.DefaultReleaseTo) || "";
}

/** Remembers `to` (a list of addresses) as the next release's default. */
function rememberReleaseTo(to) {
  try {
    localStorage.setItem(RELEASE_TO_KEY, to.join(", "));
  } catch {
    // Storage turned off: nothing remembered.
  }
}

/** The release rules in the dialog: what goes out on its own, and what never goes out. */
function showReleaseRules() {
  const rules = [];
  if (state.relay.AutoRelease) rules.push(`Mail to addresses matching ${state.relay.AutoRelease} is released on its own as it arrives.`);
  const blocked = state.relay.MessageRelay && state.relay.MessageRelay.BlockedRecipients;
  if (blocked) rules.push(`Never sent to addresses matching ${blocked}.`);
  $("release-rules").textContent = rules.join(" ");
  $("release-rules").hidden = rules.length === 0;
}

/** The header's note that auto-release is on (`[inbox] release_matching`). */
function showAutoRelease(config) {
  const note = $("auto-release");
  note.hidden = !config.AutoRelease;
  if (!config.AutoRelease) return;
  note.textContent = `Auto-release: ${config.AutoRelease}`;
  note.title = `Mail to recipients matching ${config.AutoRelease} is also sent to them through Gmail (the queue); everything else stays here.`;
}
