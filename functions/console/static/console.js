// The console's only script: the new key's copy button and confirmations before revoking or
// removing. Every page works without it; nothing here keeps or sends anything.
"use strict";
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  const status = document.getElementById(button.dataset.status || "");
  try {
    await navigator.clipboard.writeText(field.value);
    if (status) status.textContent = "Copied to the clipboard.";
  } catch (error) {
    field.select();  // a browser that refuses the clipboard: selected, for Ctrl+C
    if (status) status.textContent = "Select and copy it yourself (Ctrl+C): the browser refused the clipboard.";
  }
});
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
