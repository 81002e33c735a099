// Embudo metrics dashboard: polls the KPI API with If-None-Match, so an unchanged state
// costs a 304 per request; redraws only what changed.
"use strict";

const config = JSON.parse(document.getElementById("embudo-config").textContent);
const TOKEN_KEY = "embudo.metrics.token";
const $ = (id) => document.getElementById(id);

let token = localStorage.getItem(TOKEN_KEY) || config.token || "";
const cache = new Map(); // url -> {etag, body}
let charts = null;
let pollTimer = null;
let generation = 0; // a newer poll (e.g. after a picker change) supersedes an older one
let currency = "";

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

// GET with the cached ETag; returns {body, changed}. `slot` names the cache entry (default:
// the URL), so a URL that changes over time (the goals' moment) keeps one entry, not one each.
async function getJson(url, slot = url) {
  const cached = cache.get(slot);
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  if (cached && cached.url === url) headers["If-None-Match"] = cached.etag;
  const response = await fetch(url, { headers, cache: "no-store" });
  if (response.status === 304 && cached) return { body: cached.body, changed: false };
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new ApiError(response.status, body);
  const etag = response.headers.get("ETag");
  if (etag) cache.set(slot, { url, etag, body });
  return { body, changed: true };
}

function daysBetween(from, to) {
  return (Date.parse(to) - Date.parse(from)) / 86400000;
}

function query(extra = {}) {
  const params = new URLSearchParams();
  const values = {
    from: $("from").value, to: $("to").value, campaign_id: $("campaign").value,
    channel: $("channel").value, attribution: $("attribution").value, tz: $("tz").value, ...extra,
  };
  for (const [name, value] of Object.entries(values)) if (value) params.set(name, value);
  return params.toString();
}

function chosenInterval() {
  const picked = $("interval").value;
  if (picked !== "auto") return picked;
  const from = $("from").value, to = $("to").value;
  if (!from || !to) return "day";
  const days = daysBetween(from, to);
  return days <= 120 ? "day" : days <= 7 * 300 ? "week" : "month";
}

function lookup(object, path) {
  return path.split(".").reduce((value, key) => (value == null ? value : value[key]), object);
}

function format(value, kind) {
  if (value === null || value === undefined) return "–";
  switch (kind) {
    case "money": return `${value} ${currency}`;
    case "ratio": return `${(value * 100).toFixed(2)}%`;
    case "days": return `${value.toFixed(1)} d`;
    case "hours": return `${value.toFixed(1)} h`;
    case "number": return value.toFixed(2);
    default: return String(value);
  }
}

function renderTiles(kpis) {
  currency = kpis.currency;
  for (const tile of document.querySelectorAll(".tile")) {
    const value = lookup(kpis, tile.dataset.kpi);
    tile.dataset.value = value === null || value === undefined ? "" : String(value);
    tile.querySelector(".value").textContent = format(value, tile.dataset.format);
  }
  $("as-of").textContent = kpis.as_of || "no events yet";
  // Show the period the server resolved (defaults included) in the pickers.
  if (!$("from").value) $("from").value = kpis.from.slice(0, 10);
  if (!$("to").value) $("to").value = kpis.to.slice(0, 10);
}

function makeCharts() {
  const common = { animation: false, responsive: true, maintainAspectRatio: false };
  return {
    funnel: new Chart($("funnel-chart"), {
      type: "bar",
      data: { labels: ["Visitors", "Leads", "MQL", "SQL", "Opportunity", "Customer"],
              datasets: [{ label: "Reaching the stage", data: [], backgroundColor: "#2f6fde" }] },
      options: { ...common, indexAxis: "y", plugins: { legend: { display: false } } },
    }),
    timeseries: new Chart($("timeseries-chart"), {
      type: "line",
      data: { labels: [], datasets: [
        { label: "Visitors", data: [], borderColor: "#8e6bd1", yAxisID: "count" },
        { label: "Leads", data: [], borderColor: "#2f6fde", yAxisID: "count" },
        { label: "New customers", data: [], borderColor: "#1b998b", yAxisID: "count" },
        { label: "Revenue", data: [], borderColor: "#e07a1f", yAxisID: "money" },
      ] },
      options: { ...common, scales: {
        count: { position: "left", beginAtZero: true, ticks: { precision: 0 } },
        money: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } },
      } },
    }),
  };
}

function renderFunnel(kpis) {
  const f = kpis.funnel;
  charts.funnel.data.datasets[0].data = [kpis.visitors, f.leads, f.mql, f.sql, f.opportunity, f.customer];
  charts.funnel.update("none");
}

function renderTimeseries(series) {
  const buckets = series.buckets;
  charts.timeseries.data.labels = buckets.map((b) => b.from.slice(0, 10));
  const [visitors, leads, customers, revenue] = charts.timeseries.data.datasets;
  visitors.data = buckets.map((b) => b.visitors);
  leads.data = buckets.map((b) => b.leads_generated);
  customers.data = buckets.map((b) => b.new_customers);
  revenue.data = buckets.map((b) => Number(b.revenue));
  charts.timeseries.update("none");
}

const COLUMNS = [
  ["visitors", "Visitors", "count"], ["sessions", "Sessions", "count"],
  ["leads_generated", "Leads", "count"], ["conversion_rate", "Visitor → lead", "ratio"],
  ["clicks", "Clicks", "count"], ["spend", "Spend", "money"],
  ["conversion_rates.click_to_lead", "Click → lead", "ratio"], ["new_customers", "New customers", "count"],
  ["revenue", "Revenue", "money"], ["cac", "CAC", "money"], ["roi", "ROI", "ratio"],
  ["win_rate", "Win rate", "ratio"],
];

function cell(tag, text) {
  const element = document.createElement(tag);
  element.textContent = text;
  return element;
}

function renderBreakdown(table, body, keyName, label) {
  const head = document.createElement("tr");
  head.append(cell("th", label), ...COLUMNS.map(([, title]) => cell("th", title)));
  table.tHead.replaceChildren(head);
  table.tBodies[0].replaceChildren(...body.rows.map((row) => {
    const tr = document.createElement("tr");
    tr.dataset.key = row[keyName] ?? "";
    tr.append(cell("td", row[keyName] ?? "(unattributed)"),
              ...COLUMNS.map(([name, , kind]) => cell("td", format(lookup(row, name), kind))));
    return tr;
  }));
}

// Keep the picker's choice; offer every value the period has.
function fillPicker(select, values, allLabel) {
  const chosen = select.value;
  const options = [new Option(allLabel, "")];
  for (const value of values) if (value !== null) options.push(new Option(value, value));
  if (chosen && !values.includes(chosen)) options.push(new Option(chosen, chosen));
  select.replaceChildren(...options);
  select.value = chosen;
}

function renderList(list, items, nameKey) {
  list.replaceChildren(...items.map((item) => cell("li", `${item[nameKey]} — ${item.count}`)));
}

function renderObjections(list, keyed) {
  list.replaceChildren(...keyed.map((item) => cell(
    "li", `${item.key} — ${item.count}: ` + item.texts.map((t) => `${t.text} (${t.count})`).join(", "),
  )));
}

function renderFeedback(feedback) {
  renderList($("lost-reasons"), feedback.lost_reasons, "reason");
  renderList($("objections"), feedback.objections, "objection");
  renderList($("rejection-reasons"), feedback.rejection_reasons, "reason");
  renderList($("disqualification-reasons"), feedback.disqualification_reasons, "reason");
  for (const outcome of ["lost", "won", "open"]) {
    renderObjections($(`objections-${outcome}`), feedback.objections_by_outcome[outcome]);
  }
  $("feedback-campaigns").replaceChildren(...feedback.campaigns.map((c) => cell(
    "li",
    `${c.campaign_id ?? "(unattributed)"}: ${c.deals_lost} lost — ` +
      c.objections.map((o) => `${o.objection} (${o.count})`).join(", "),
  )));
}

const MONEY_METRICS = new Set(["revenue", "pipeline_created"]);
const METRIC_NAMES = {
  leads_generated: "Leads", mql: "MQLs reached", sql: "SQLs reached", opportunities: "Opportunities reached",
  new_customers: "New customers", deals_won: "Deals won", revenue: "Revenue", pipeline_created: "Pipeline created",
};

// A goal's numbers as the progress bar's caption: "actual / target", in money or a count.
function goalAmount(goal, value) {
  if (value === null || value === undefined) return "–";
  if (MONEY_METRICS.has(goal.metric)) return `${value} ${goal.currency}`;
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function renderGoal(goal) {
  const p = goal.progress;
  const item = document.createElement("li");
  item.className = "goal";
  item.dataset.goal = goal.goal_id;
  item.dataset.status = p.status;
  const head = document.createElement("div");
  head.className = "line";
  const status = cell("span", p.status.replace("_", " "));
  status.className = "goal-status";
  head.append(cell("span", `${goal.name} · ${METRIC_NAMES[goal.metric]}`), status);
  const bar = document.createElement("div");
  bar.className = "bar";
  const fill = document.createElement("div");
  fill.className = "fill";
  fill.style.width = `${Math.min(1, p.attainment ?? 0) * 100}%`;
  const expected = document.createElement("div");
  expected.className = "expected";  // where the goal should be by now
  expected.style.left = `${Math.min(1, Number(p.expected_to_date) / Number(p.target)) * 100}%`;
  bar.append(fill, expected);
  const numbers = cell("div", `${goalAmount(goal, p.actual)} / ${goalAmount(goal, p.target)} · ` +
    `expected ${goalAmount(goal, p.expected_to_date)} · pace ${format(p.pace, "number")} · ` +
    `projected ${goalAmount(goal, p.projected)}`);
  numbers.className = "goal-numbers";
  item.append(head, bar, numbers);
  return item;
}

function renderGoals(page) {
  for (const team of document.querySelectorAll("#goals .team")) {
    const goals = page.items.filter((goal) => goal.team === team.dataset.team);
    team.querySelector("ul").replaceChildren(...goals.map(renderGoal));
  }
}

function renderOverdue(queue) {
  $("sla-hours").textContent = `(${queue.sla_accept_hours} h)`;
  $("overdue").tBodies[0].replaceChildren(...queue.items.map((item) => {
    const tr = document.createElement("tr");
    tr.dataset.deal = item.deal_id;
    tr.append(cell("td", format(item.hours_waiting, "hours")), cell("td", item.deal_id), cell("td", item.lead_id),
              cell("td", item.campaign_id ?? "(unattributed)"), cell("td", item.created_at));
    return tr;
  }));
}

// The goals running at the period's last moment, or now (to the minute) if that is earlier.
function goalsMoment() {
  const now = Math.floor(Date.now() / 60000) * 60000;
  const to = $("to").value ? Date.parse($("to").value) - 1000 : now;
  return new Date(Math.min(now, to)).toISOString();
}

async function refresh() {
  if (!token) {
    setStatus("Enter the API token to load the metrics.", true);
    return;
  }
  const kpis = await getJson(`/v1/kpis?${query()}`);
  if (kpis.changed) { renderTiles(kpis.body); renderFunnel(kpis.body); }
  const [series, byCampaign, byChannel, feedback, goals, overdue] = await Promise.all([
    getJson(`/v1/kpis/timeseries?${query({ interval: chosenInterval() })}`),
    getJson(`/v1/kpis/breakdown?${query({ by: "campaign", campaign_id: "" })}`),
    getJson(`/v1/kpis/breakdown?${query({ by: "channel", channel: "" })}`),
    getJson(`/v1/feedback?${query()}`),
    getJson(`/v1/goals?${new URLSearchParams({ active_at: goalsMoment(), limit: "200" })}`, "goals"),
    getJson(`/v1/sla/overdue?${query({ from: "", to: "", limit: "200" })}`),
  ]);
  if (series.changed) renderTimeseries(series.body);
  if (byCampaign.changed) {
    renderBreakdown($("breakdown-campaign"), byCampaign.body, "campaign_id", "Campaign");
    fillPicker($("campaign"), byCampaign.body.rows.map((r) => r.campaign_id), "All campaigns");
  }
  if (byChannel.changed) {
    renderBreakdown($("breakdown-channel"), byChannel.body, "channel", "Channel");
    fillPicker($("channel"), byChannel.body.rows.map((r) => r.channel), "All channels");
  }
  if (feedback.changed) renderFeedback(feedback.body);
  if (goals.changed) renderGoals(goals.body);
  if (overdue.changed) renderOverdue(overdue.body);
  setStatus(`Updated ${new Date().toLocaleTimeString()}`);
}

async function poll() {
  const mine = ++generation;
  clearTimeout(pollTimer);
  try {
    await refresh();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      setStatus("The API token was refused: enter a valid one.", true);
    } else {
      setStatus(`Could not load metrics: ${error.message}`, true);
    }
  }
  if (mine === generation) pollTimer = setTimeout(poll, config.pollSeconds * 1000);
}

// Dates, days, weeks and months are the chosen zone's; it starts as the browser's own.
function fillTimeZones() {
  const own = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const zones = new Set(Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : []);
  zones.add(own).add("UTC");
  for (const zone of [...zones].sort()) $("tz").add(new Option(zone, zone, false, zone === own));
}

function start() {
  charts = makeCharts();
  fillTimeZones();
  $("token").value = token;
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    localStorage.setItem(TOKEN_KEY, token);
    cache.clear();
    poll();
  });
  for (const id of ["from", "to", "campaign", "channel", "attribution", "tz", "interval"]) {
    $(id).addEventListener("change", poll);
  }
  poll();
}

start();
