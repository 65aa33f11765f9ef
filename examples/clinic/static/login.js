// Logs in through the JSON API; the response sets the dashboard's cookie, then we go there.
"use strict";

document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const response = await fetch("/api/v1/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: form.get("username"), password: form.get("password") }),
  });
  if (response.ok) {
    location.assign("/afterwork/");
  } else {
    document.getElementById("error").textContent = "Wrong username or password.";
  }
});
