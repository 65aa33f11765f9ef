// Logs in through the JSON API; the response sets the browser's cookies, then we go on:
// to ?next= when it is a path of this site, else to the afterwork dashboard.
"use strict";

function destination() {
  const next = new URLSearchParams(location.search).get("next") || "";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\")
    ? next
    : "/afterwork/";
}

document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const response = await fetch("/api/v1/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: form.get("username"), password: form.get("password") }),
  });
  if (response.ok) {
    location.assign(destination());
  } else if (response.status === 429) {
    document.getElementById("error").textContent = "Too many attempts; try again later.";
  } else {
    document.getElementById("error").textContent = "Wrong username or password.";
  }
});
