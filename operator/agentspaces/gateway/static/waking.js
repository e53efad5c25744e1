// The wake gateway's waking page: poll the workspace's state (bounded), show it, and
// reload the same URL once the workspace is ready (the gateway then proxies it to the
// new server). Text only ever goes in through textContent.
"use strict";
(function () {
  const main = document.getElementById("waking");
  if (!main) return;
  const url = main.dataset.status;
  const interval = Math.max(1000, Number(main.dataset.interval) || 2000);
  let left = Math.min(1800, Number(main.dataset.polls) || 600);
  const show = (id, text) => {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  };
  function render(state) {
    show("phase", state.phase || "unknown");
    if (state.summary) show("summary", state.summary);
    const list = document.getElementById("conditions");
    if (!list || !Array.isArray(state.conditions)) return;
    list.replaceChildren(...state.conditions.map((c) => {
      const item = document.createElement("li");
      const detail = [c.reason, c.message].filter(Boolean).join(": ");
      item.textContent = `${c.type} ${c.status}` + (detail ? ` (${detail})` : "");
      return item;
    }));
  }
  async function poll() {
    left -= 1;
    try {
      const resp = await fetch(url, {credentials: "same-origin", cache: "no-store",
                                     headers: {Accept: "application/json"}});
      const type = resp.headers.get("Content-Type") || "";
      if (resp.ok && type.startsWith("application/json")) {
        const state = await resp.json();
        render(state);
        if (state.ready) {
          show("note", "Ready: opening it.");
          window.location.reload();
          return;
        }
      }
    } catch (err) {
      // A failed poll (the network, a restart) is retried with the next one.
    }
    if (left > 0) window.setTimeout(poll, interval);
    else show("note", "Still not ready. Reload this page to keep waiting.");
  }
  window.setTimeout(poll, interval);
})();
