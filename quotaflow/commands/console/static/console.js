// quotaflow console: small enhancements; every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Ask before a destructive change (forms marked data-confirm).
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  // Search as you type (debounced) on filter forms marked data-autosubmit.
  for (const form of document.querySelectorAll("form[data-autosubmit]")) {
    let timer = null;
    const search = form.querySelector("input[type=search]");
    if (search) {
      search.addEventListener("input", () => {
        clearTimeout(timer);
        timer = setTimeout(() => form.requestSubmit(), 400);
      });
    }
    const select = form.querySelector("select");
    if (select) select.addEventListener("change", () => form.requestSubmit());
  }
  // Hide the explain steps that changed nothing.
  const toggle = document.getElementById("changes-only");
  const timeline = document.getElementById("timeline");
  if (toggle && timeline) {
    toggle.addEventListener("change", () => timeline.classList.toggle("hide-unchanged", toggle.checked));
  }
});
