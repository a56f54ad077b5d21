// roost: the little script the shared pages use (progressive: every page works without it).
"use strict";
document.addEventListener("submit", function (event) {
  // <form data-confirm="Take down this account?"> asks before submitting
  var form = event.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
    return;
  }
  // one submission per click: a slow server must not get the form twice
  var buttons = form.querySelectorAll ? form.querySelectorAll("button[type=submit], button:not([type])") : [];
  window.setTimeout(function () {
    for (var i = 0; i < buttons.length; i++) { buttons[i].disabled = true; }
  }, 0);
});
document.addEventListener("click", function (event) {
  // <button data-copy="text"> copies its text (invite codes)
  var button = event.target.closest ? event.target.closest("[data-copy]") : null;
  if (!button || !navigator.clipboard) { return; }
  navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () {
    var label = button.textContent;
    button.textContent = "Copied";
    window.setTimeout(function () { button.textContent = label; }, 1500);
  });
});
window.addEventListener("pageshow", function () {
  // coming back to a page (back button) re-enables what a submission disabled
  var buttons = document.querySelectorAll("button[disabled]");
  for (var i = 0; i < buttons.length; i++) { buttons[i].disabled = false; }
});
