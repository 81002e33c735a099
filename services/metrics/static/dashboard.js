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

// GET with the cached ETag; returns {body, changed}.
async function getJson(url) {
  const cached = cache.get(url);
  const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
  if (cached) headers["If-None-Match"] = cached.etag;
  const response = await fetch(url, { headers, cache: "no-store" });
  if (response.status === 304 && cached) return { body: cached.body, changed: false };
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new ApiError(response.status, body);
  const etag = response.headers.get("ETag");
  if (etag) cache.set(url, { etag, body });
  return { body, changed: true };
}

function daysBetween(from, to) {
  return (Date.parse(to) - Date.parse(from)) / 86400000;
}

function query(extra = {}) {
  const params = new URLSearchParams();
  const values = {
    from: $("from").value, to: $("to").value, campaign_id: $("campaign").value,
    channel: $("channel").value, attribution: $("attribution").value, ...extra,
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

function renderFeedback(feedback) {
  renderList($("lost-reasons"), feedback.lost_reasons, "reason");
  renderList($("objections"), feedback.objections, "objection");
  $("feedback-campaigns").replaceChildren(...feedback.campaigns.map((c) => cell(
    "li",
    `${c.campaign_id ?? "(unattributed)"}: ${c.deals_lost} lost — ` +
      c.objections.map((o) => `${o.objection} (${o.count})`).join(", "),
  )));
}

async function refresh() {
  if (!token) {
    setStatus("Enter the API token to load the metrics.", true);
    return;
  }
  const kpis = await getJson(`/v1/kpis?${query()}`);
  if (kpis.changed) { renderTiles(kpis.body); renderFunnel(kpis.body); }
  const [series, byCampaign, byChannel, feedback] = await Promise.all([
    getJson(`/v1/kpis/timeseries?${query({ interval: chosenInterval() })}`),
    getJson(`/v1/kpis/breakdown?${query({ by: "campaign", campaign_id: "" })}`),
    getJson(`/v1/kpis/breakdown?${query({ by: "channel", channel: "" })}`),
    getJson(`/v1/feedback?${query()}`),
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

function start() {
  charts = makeCharts();
  $("token").value = token;
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    localStorage.setItem(TOKEN_KEY, token);
    cache.clear();
    poll();
  });
  for (const id of ["from", "to", "campaign", "channel", "attribution", "interval"]) {
    $(id).addEventListener("change", poll);
  }
  poll();
}

start();
