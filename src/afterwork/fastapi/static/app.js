// afterwork dashboard. No build step, no dependencies.
// Every value that comes from a job is put in the page with textContent, never as HTML.
"use strict";

(function () {
  const STATUSES = ["scheduled", "queued", "running", "succeeded", "failed", "cancelled"];
  const state = {
    csrfHeader: "X-Afterwork-CSRF",
    filters: { status: "", queue: "", task: "" },
    cursor: null,
    rows: new Map(), // job id -> <tr>
    jobId: null, // the job shown on the job page
    timeline: [],
    queueTimer: null,
    jobTimer: null,
    range: 3600, // seconds of history the overview shows
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function when(seconds) {
    if (seconds === null || seconds === undefined) return "";
    return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function pretty(value) {
    if (value === undefined) return "";
    return JSON.stringify(value, null, 2);
  }

  function notice(message) {
    const box = $("notice");
    box.textContent = message || "";
    box.hidden = !message;
  }

  async function api(path, options) {
    const init = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    init.headers = Object.assign({ Accept: "application/json" }, init.headers);
    if (init.method && init.method !== "GET") init.headers[state.csrfHeader] = "1";
    const response = await fetch(path, init);
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : response.statusText;
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return body;
  }

  function statusCell(status) {
    return el("td", status, "status status-" + (STATUSES.includes(status) ? status : "unknown"));
  }

  function jobLink(id) {
    // Ids start with their creation time: the end tells jobs apart.
    const link = el("a", "…" + String(id).slice(-12));
    link.href = "#/jobs/" + encodeURIComponent(id);
    link.title = String(id);
    return link;
  }

  // -- overview: activity charts and per-task table, from GET history -------------

  const SVG = "http://www.w3.org/2000/svg";
  const CHART_W = 600;
  const CHART_H = 100;

  function svgEl(tag, attrs, className) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (className) node.setAttribute("class", className);
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0) + " ms";
    return age(seconds);
  }

  function clock(seconds) {
    return new Date(seconds * 1000).toISOString().slice(11, 16);
  }

  // Bars of one value per step (missing steps are zero), drawn into an empty <svg>.
  function drawBars(svg, values, className, format) {
    clear(svg);
    svg.setAttribute("viewBox", "0 0 " + CHART_W + " " + CHART_H);
    svg.setAttribute("preserveAspectRatio", "none");
    const top = Math.max(...values, 0);
    for (const y of [0.25, 0.5, 0.75]) {
      svg.appendChild(svgEl("line", { x1: 0, x2: CHART_W, y1: CHART_H * y, y2: CHART_H * y }, "grid"));
    }
    const width = CHART_W / values.length;
    values.forEach((value, i) => {
      if (!value) return;
      const height = Math.max((value / top) * (CHART_H - 4), 1);
      const bar = svgEl("rect", {
        x: (i * width).toFixed(2), y: (CHART_H - height).toFixed(2),
        width: Math.max(width - (width > 3 ? 1 : 0), 0.5).toFixed(2), height: height.toFixed(2),
      }, "bar " + className);
      const title = svgEl("title", {});
      title.textContent = format(value);
      bar.appendChild(title);
      svg.appendChild(bar);
    });
    const label = $(svg.id + "-max");
    if (label) label.textContent = top ? "max " + format(top) : "";
    const axis = svg.nextElementSibling;
    return axis;
  }

  async function loadHistory() {
    const range = state.range;
    const step = range <= 3600 ? 60 : 900;
    const until = Math.floor(Date.now() / 60000) * 60 + 60;
    const since = until - range;
    const query = (params) => "history?" + new URLSearchParams(params).toString();
    const [totals, tasks] = await Promise.all([
      api(query({ since, until, step, by: "none" })),
      api(query({ since, until, step: range })),
    ]);
    const slots = Math.round(range / step);
    const pick = (fn) => {
      const values = new Array(slots).fill(0);
      for (const p of totals) {
        const i = Math.floor((p.at - since) / step);
        if (i >= 0 && i < slots) values[i] = fn(p) || 0;
      }
      return values;
    };
    const count = (n) => String(Math.round(n)) + " / " + (step === 60 ? "min" : step / 60 + " min");
    const charts = [
      ["chart-throughput", pick((p) => p.succeeded), "bar-ok", count],
      ["chart-failures", pick((p) => p.failed + p.retried), "bar-bad", count],
      ["chart-wait", pick((p) => p.wait_p95), "bar-wait", duration],
    ];
    for (const [id, values, className, format] of charts) {
      const axis = drawBars($(id), values, className, format);
      axis.querySelector(".axis-from").textContent = clock(since);
      axis.querySelector(".axis-to").textContent = clock(until);
    }
    $("history-none").hidden = totals.length > 0;
    const body = $("task-stats").tBodies[0];
    clear(body);
    tasks.sort((a, b) => b.attempts - a.attempts);
    for (const p of tasks) {
      const row = el("tr");
      row.dataset.task = p.task;
      row.appendChild(el("td", p.task));
      row.appendChild(el("td", p.queue));
      row.appendChild(el("td", p.attempts, "num"));
      const failures = p.failed + p.retried;
      const rate = p.attempts ? (100 * failures / p.attempts).toFixed(1) + " %" : "";
      row.appendChild(el("td", rate, failures ? "num status-failed" : "num"));
      row.appendChild(el("td", duration(p.run_p95), "num"));
      row.appendChild(el("td", duration(p.wait_p95), "num"));
      body.appendChild(row);
    }
  }

  function setRange(seconds) {
    state.range = seconds;
    for (const button of $("range").querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.range) === seconds));
    }
    loadHistory().catch((err) => notice(err.message));
  }

  // -- overview: queues -------------------------------------------------------------

  async function loadQueues() {
    const queues = await api("queues");
    const body = $("queues").tBodies[0];
    clear(body);
    for (const queue of queues) {
      const row = el("tr");
      row.appendChild(el("td", queue.paused ? queue.queue + " (paused)" : queue.queue));
      for (const status of STATUSES) row.appendChild(el("td", queue.counts[status] || 0, "num"));
      row.appendChild(el("td", age(queue.oldest_waiting_age), "num"));
      const cell = el("td");
      cell.appendChild(pauseButton(queue));
      row.appendChild(cell);
      body.appendChild(row);
    }
  }

  // Pause or resume a queue across the fleet (running jobs finish; nothing new starts).
  function pauseButton(queue) {
    const action = queue.paused ? "resume" : "pause";
    const button = el("button", action);
    button.type = "button";
    button.className = "queue-" + action;
    button.addEventListener("click", () => {
      button.disabled = true;
      api("queues/" + encodeURIComponent(queue.queue) + "/" + action, { method: "POST" })
        .then(() => { notice(""); return loadQueues(); })
        .catch((err) => notice(err.message))
        .finally(() => { button.disabled = false; });
    });
    return button;
  }

  // -- overview: workers (their presence records) -----------------------------------

  async function loadWorkers() {
    const workers = await api("workers");
    const body = $("workers").tBodies[0];
    clear(body);
    const now = Date.now() / 1000;
    for (const w of workers) {
      const row = el("tr");
      row.dataset.worker = w.id;
      row.appendChild(el("td", w.id));
      row.appendChild(el("td", w.host));
      row.appendChild(el("td", w.pid, "num"));
      row.appendChild(el("td", w.queues === null ? "all" : w.queues.join(", ")));
      row.appendChild(el("td", w.running.length + " / " + w.concurrency, "num"));
      row.appendChild(el("td", age(Math.max(now - w.started_at, 0)), "num"));
      row.appendChild(el("td", when(w.last_seen)));
      body.appendChild(row);
    }
    $("workers-none").hidden = workers.length > 0;
  }

  function scheduleQueues() {
    if (state.queueTimer !== null) return;
    state.queueTimer = setTimeout(() => {
      state.queueTimer = null;
      Promise.all([loadQueues(), loadWorkers()]).catch((err) => notice(err.message));
    }, 500);
  }

  // -- bulk actions: the jobs the filters match, counted first, then confirmed -------

  async function bulkAction(action, ...applicable) {
    const f = state.filters;
    if (f.status && !applicable.includes(f.status)) {
      notice(action + " applies to " + applicable.join(", ") + " jobs, not " + f.status);
      return;
    }
    const body = { status: f.status ? [f.status] : null, queue: f.queue || null, task: f.task || null };
    const post = (dryRun) => api("bulk/" + action, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(Object.assign({ dry_run: dryRun }, body)),
    });
    try {
      const counted = await post(true);
      if (counted.matched === 0) {
        notice("no job matches the filter; nothing to " + action);
        return;
      }
      if (!window.confirm(action + " " + counted.matched + " job(s) matching the filter?")) return;
      const done = await post(false);
      notice(action + ": " + done.changed + " of " + done.matched + " job(s)");
      await loadJobs(false);
    } catch (err) {
      notice(err.message);
    }
  }

  // -- overview: jobs ---------------------------------------------------------------

  function jobsQuery(before) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(state.filters)) if (value) params.set(name, value);
    if (before) params.set("before", before);
    params.set("limit", "50");
    return "jobs?" + params.toString();
  }

  function fillRow(row, job) {
    clear(row);
    const idCell = el("td");
    idCell.appendChild(jobLink(job.id));
    row.appendChild(idCell);
    row.appendChild(el("td", job.task));
    row.appendChild(el("td", job.queue));
    row.appendChild(statusCell(job.status));
    const attempts = job.max_attempts ? job.attempts + "/" + job.max_attempts : job.attempts;
    row.appendChild(el("td", attempts, "num"));
    const progress = el("td", "", "num");
    if (job.progress !== null && job.progress !== undefined) {
      progress.textContent = Math.round(job.progress * 100) + "%";
    }
    row.appendChild(progress);
    row.appendChild(el("td", when(job.created_at), "num"));
  }

  function addRow(job, atTop) {
    const body = $("jobs").tBodies[0];
    let row = state.rows.get(job.id);
    if (!row) {
      row = el("tr");
      row.dataset.job = job.id;
      state.rows.set(job.id, row);
      if (atTop) {
        body.insertBefore(row, body.firstChild);
        row.classList.add("fresh");
      } else {
        body.appendChild(row);
      }
    }
    fillRow(row, job);
  }

  async function loadJobs(more) {
    if (!more) {
      clear($("jobs").tBodies[0]);
      state.rows.clear();
      state.cursor = null;
    }
    const page = await api(jobsQuery(more ? state.cursor : null));
    for (const job of page.jobs) addRow(job, false);
    state.cursor = page.next_cursor;
    $("more").hidden = !state.cursor;
  }

  function matchesFilters(event) {
    const f = state.filters;
    return (!f.status || f.status === event.status) && (!f.queue || f.queue === event.queue) &&
      (!f.task || f.task === event.task);
  }

  function onJobEvent(event) {
    scheduleQueues();
    if (state.jobId === event.job_id) {
      state.timeline.push({ at: event.at, text: event.kind + " → " + event.status +
        (event.message ? ": " + event.message : "") });
      scheduleJob();
    }
    const row = state.rows.get(event.job_id);
    if (row || matchesFilters(event)) {
      api("jobs/" + encodeURIComponent(event.job_id))
        .then((job) => {
          if (state.rows.has(job.id) || matchesFilters(job)) addRow(job, !state.rows.has(job.id));
        })
        .catch(() => {}); // purged meanwhile
    }
  }

  // -- schedules and services -------------------------------------------------------

  function fillTable(table, items, action) {
    const head = table.tHead;
    const body = table.tBodies[0];
    clear(head);
    clear(body);
    const columns = [];
    for (const item of items) for (const key of Object.keys(item)) if (!columns.includes(key)) columns.push(key);
    const headRow = el("tr");
    for (const column of columns) headRow.appendChild(el("th", column));
    if (action) headRow.appendChild(el("th", ""));
    head.appendChild(headRow);
    for (const item of items) {
      const row = el("tr");
      for (const column of columns) {
        const value = item[column];
        row.appendChild(el("td", typeof value === "object" && value !== null ? JSON.stringify(value) : value));
      }
      if (action) {
        const cell = el("td");
        cell.appendChild(action(item));
        row.appendChild(cell);
      }
      body.appendChild(row);
    }
  }

  async function loadSchedules() {
    const items = (await api("schedules")).map((s) => ({
      name: s.name,
      task: s.task,
      schedule: s.kind === "cron" ? s.spec + " (" + s.tz + ")" : "every " + s.spec,
      "next run": s.next_run_at || "",
      "last run": s.last_run_at || "",
    }));
    fillTable($("schedules"), items, (item) => {
      const button = el("button", "run now");
      button.type = "button";
      button.addEventListener("click", () => {
        button.disabled = true;
        api("schedules/" + encodeURIComponent(item.name) + "/trigger", { method: "POST" })
          .then(() => notice(""))
          .catch((err) => notice(err.message))
          .finally(() => { button.disabled = false; });
      });
      return button;
    });
  }

  function instanceText(s) {
    // Every process running it: host:pid (a singleton's is the holder of its lease).
    const where = s.instances.map((i) => i.host + ":" + i.pid + (i.local ? " (this process)" : ""));
    if (s.singleton) return where.length ? "held by " + where.join(", ") : "no holder";
    return where.join(", ");
  }

  async function loadServices() {
    const items = (await api("services")).map((s) => ({
      name: s.name,
      state: s.state,
      placement: s.singleton ? "singleton" : "every process",
      instances: instanceText(s),
      restarts: s.restarts,
      crashes: s.crashes,
      uptime: s.uptime === null ? "" : Math.round(s.uptime) + " s",
      "last error": s.last_error ? s.last_error.type + ": " + s.last_error.message : "",
    }));
    fillTable($("services"), items, null);
  }

  // -- the job page -----------------------------------------------------------------

  function field(body, name, value) {
    const row = el("tr");
    row.appendChild(el("th", name));
    row.appendChild(el("td", value === null || value === undefined ? "" : value));
    body.appendChild(row);
  }

  function renderJob(job) {
    $("job-id").textContent = job.id;
    const body = $("job-fields").tBodies[0];
    clear(body);
    field(body, "task", job.task);
    field(body, "queue", job.queue);
    const status = el("tr");
    status.appendChild(el("th", "status"));
    status.appendChild(statusCell(job.status));
    body.appendChild(status);
    if (job.waiting_reason) field(body, "waiting", job.waiting_reason);
    field(body, "attempts", job.attempts + " of " + job.max_attempts);
    field(body, "priority", job.priority);
    field(body, "key", job.key);
    field(body, "worker", job.worker);
    field(body, "created", when(job.created_at));
    field(body, "due", when(job.run_at));
    field(body, "started", when(job.started_at));
    field(body, "finished", when(job.finished_at));
    const progress = $("job-progress");
    progress.value = job.progress === null || job.progress === undefined ? 0 : job.progress;
    $("job-progress-message").textContent = job.progress_message || "";
    $("job-args").textContent = pretty({ args: job.args, kwargs: job.kwargs });
    $("job-result").textContent = pretty(job.result);
    const error = job.error;
    $("job-error-section").hidden = !error;
    $("job-error-type").textContent = error ? error.type : "";
    $("job-error-message").textContent = error ? error.message : "";
    $("job-traceback").textContent = error ? error.traceback : "";
    $("cancel").disabled = !["scheduled", "queued", "running"].includes(job.status);
    $("retry").disabled = !["failed", "cancelled"].includes(job.status);
    renderAttempts(job);
    renderTimeline(job);
  }

  // Each kept attempt (oldest first): when, how long, where, how it ended, and its error
  // with the traceback folded away.
  function renderAttempts(job) {
    const attempts = job.timeline || [];
    $("job-attempts-section").hidden = attempts.length === 0;
    const body = $("job-attempts").tBodies[0];
    clear(body);
    for (const attempt of attempts) {
      const row = el("tr");
      const took = attempt.started_at === null ? "" : age(attempt.ended_at - attempt.started_at);
      row.appendChild(el("td", attempt.number));
      row.appendChild(el("td", when(attempt.started_at)));
      row.appendChild(el("td", took));
      row.appendChild(el("td", attempt.worker));
      row.appendChild(statusCell(attempt.outcome));
      const cell = el("td");
      if (attempt.error) {
        const details = el("details");
        details.appendChild(el("summary", attempt.error.type + ": " + attempt.error.message));
        details.appendChild(el("pre", attempt.error.traceback));
        cell.appendChild(details);
      }
      row.appendChild(cell);
      body.appendChild(row);
    }
  }

  function renderTimeline(job) {
    const entries = [
      { at: job.created_at, text: "created" },
      { at: job.started_at, text: "last attempt started" },
      { at: job.finished_at, text: "finished: " + job.status },
    ]
      .concat(
        (job.timeline || []).map((a) => ({
          at: a.ended_at,
          text: "attempt " + a.number + " " + a.outcome + (a.worker ? " on " + a.worker : ""),
        })),
      )
      .filter((e) => e.at !== null && e.at !== undefined)
      .concat(state.timeline);
    entries.sort((a, b) => a.at - b.at);
    const list = $("timeline");
    clear(list);
    for (const entry of entries) list.appendChild(el("li", when(entry.at) + "  " + entry.text));
  }

  async function loadJob() {
    if (!state.jobId) return;
    try {
      renderJob(await api("jobs/" + encodeURIComponent(state.jobId)));
      notice("");
    } catch (err) {
      notice(err.message);
    }
  }

  function scheduleJob() {
    if (state.jobTimer !== null) return;
    state.jobTimer = setTimeout(() => {
      state.jobTimer = null;
      loadJob();
    }, 200);
  }

  function jobAction(action) {
    if (!state.jobId) return;
    api("jobs/" + encodeURIComponent(state.jobId) + "/" + action, { method: "POST" })
      .then(renderJob)
      .catch((err) => notice(err.message));
  }

  // -- routing and the live stream --------------------------------------------------

  function route() {
    const match = /^#\/jobs\/(.+)$/.exec(location.hash);
    state.jobId = match ? decodeURIComponent(match[1]) : null;
    state.timeline = [];
    $("overview").hidden = Boolean(state.jobId);
    $("job").hidden = !state.jobId;
    notice("");
    if (state.jobId) loadJob();
  }

  function connect() {
    const live = $("live");
    const source = new EventSource("events");
    source.addEventListener("ready", () => {
      live.dataset.state = "open";
      live.textContent = "live";
      // Subscribed: reload so nothing that happened before is missed.
      refresh();
    });
    source.addEventListener("message", (message) => {
      try {
        onJobEvent(JSON.parse(message.data));
      } catch (err) {
        notice("bad event: " + err.message);
      }
    });
    source.addEventListener("error", () => {
      live.dataset.state = "closed";
      live.textContent = "reconnecting…";
    });
  }

  function refresh() {
    const tasks = [loadQueues(), loadWorkers(), loadJobs(false), loadHistory()];
    if (!$("schedules-section").hidden) tasks.push(loadSchedules());
    if (!$("services-section").hidden) tasks.push(loadServices());
    if (state.jobId) tasks.push(loadJob());
    return Promise.all(tasks).catch((err) => notice(err.message));
  }

  async function start() {
    const info = await api("info");
    state.csrfHeader = info.csrf_header;
    $("schedules-section").hidden = !info.schedules;
    $("services-section").hidden = !info.services;
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = new FormData(event.target);
      state.filters = {
        status: String(form.get("status") || ""),
        queue: String(form.get("queue") || "").trim(),
        task: String(form.get("task") || "").trim(),
      };
      loadJobs(false).catch((err) => notice(err.message));
    });
    $("more").addEventListener("click", () => loadJobs(true).catch((err) => notice(err.message)));
    $("bulk-retry").addEventListener("click", () => bulkAction("retry", "failed", "cancelled"));
    $("bulk-cancel").addEventListener("click", () => bulkAction("cancel", "scheduled", "queued", "running"));
    $("cancel").addEventListener("click", () => jobAction("cancel"));
    $("retry").addEventListener("click", () => jobAction("retry"));
    for (const button of $("range").querySelectorAll("button")) {
      button.addEventListener("click", () => setRange(Number(button.dataset.range)));
    }
    setInterval(() => {
      if (!state.jobId && !document.hidden) loadHistory().catch((err) => notice(err.message));
    }, 30000);
    window.addEventListener("hashchange", route);
    route();
    connect();
  }

  document.addEventListener("DOMContentLoaded", () => {
    start().catch((err) => notice(err.message));
  });
})();
