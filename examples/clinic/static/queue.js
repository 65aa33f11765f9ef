// The waiting-room screen: listens on /ws/queue and redraws on every update.
"use strict";

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  row.appendChild(td);
}

function render(update) {
  const assigned = document.getElementById("assigned");
  const waiting = document.getElementById("waiting");
  assigned.replaceChildren();
  waiting.replaceChildren();
  for (const entry of update.entries) {
    if (entry.status === "waiting") {
      const item = document.createElement("li");
      item.textContent = `${entry.ticket}  ${entry.patient_name}`;
      item.dataset.entry = entry.entry_id;
      waiting.appendChild(item);
    } else {
      const row = document.createElement("tr");
      row.className = entry.status;
      row.dataset.entry = entry.entry_id;
      cell(row, entry.ticket);
      cell(row, entry.patient_name);
      cell(row, entry.doctor_name);
      cell(row, entry.room);
      cell(row, entry.status.replace("_", " "));
      assigned.appendChild(row);
    }
  }
  document.getElementById("reason").textContent = `last update: ${update.reason}`;
}

function connect(delay) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/queue`);
  const status = document.getElementById("connection");
  socket.onopen = () => {
    status.textContent = "live";
    status.className = "online";
    delay = 500;
  };
  socket.onmessage = (event) => render(JSON.parse(event.data));
  socket.onclose = () => {
    status.textContent = "reconnecting…";
    status.className = "offline";
    setTimeout(() => connect(Math.min(delay * 2, 10000)), delay);
  };
}

connect(500);
