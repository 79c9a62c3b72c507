// The risk desk's page: state pushed by the desk over server-sent events, drawn here.
// No polling and no refresh: two EventSource streams (/api/events, /api/rejections).
// Money arrives as integer strings in 1/10,000 of the currency and is formatted with
// BigInt arithmetic, never through a float.
"use strict";

const WINDOW_MS = 5 * 60 * 1000;
const RAISED = new Set(["ALERT_KIND_HALT", "ALERT_KIND_LIMIT_BREACH", "ALERT_KIND_INVALID_STATE",
  "ALERT_KIND_MARGIN_CALL"]);

let me = null;
const accounts = new Map();      // id -> {holdings: Map(symbol -> holding), totals, alerts: Map}
const currencies = new Map();    // symbol -> currency, learnt from holdings
const problems = new Map();      // source -> message
let samples = [];
let shownIds = [];
let mainEvents = null;
let rejectionEvents = null;
let pendingHalt = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// -- money and numbers: exact ------------------------------------------------

function currencySymbol(currency) {
  if (!currency) return "";
  try {
    const part = new Intl.NumberFormat("en-US", { style: "currency", currency })
      .formatToParts(0).find((p) => p.type === "currency");
    if (part) return /^[A-Z]{2,}$/.test(part.value) ? part.value + "\u00a0" : part.value;
  } catch (error) {
    // not an ISO 4217 code: show the code itself
  }
  return currency + "\u00a0";
}

// "68910000" (1/10,000) in USD -> "$6,891.00"; four decimals only when they are needed.
function formatMoney(fixed, currency) {
  if (fixed === undefined || fixed === null || fixed === "") return "";
  let value = BigInt(fixed);
  const negative = value < 0n;
  if (negative) value = -value;
  let fraction = (value % 10000n).toString().padStart(4, "0");
  if (fraction.endsWith("00")) fraction = fraction.slice(0, 2);
  const text = (value / 10000n).toLocaleString("en-US") + "." + fraction;
  return (negative ? "-" : "") + currencySymbol(currency) + text;
}

function formatQuantity(quantity) {
  return BigInt(quantity || "0").toLocaleString("en-US");
}

function signClass(fixed) {
  const value = BigInt(fixed || "0");
  return value < 0n ? "money negative" : value > 0n ? "money positive" : "money";
}

function formatTime(ms) {
  const value = Number(ms || 0);
  if (!value) return "";
  const when = new Date(value);
  return when.toLocaleDateString("en-CA") + " " + when.toLocaleTimeString("en-GB");
}

const short = (name, prefix) => (name || "").replace(prefix, "");

// -- sign-in -----------------------------------------------------------------

async function start() {
  const reply = await fetch("/api/me", { credentials: "same-origin" });
  if (reply.status === 401) {
    $("sign-in").hidden = false;
    $("desk").hidden = true;
    return;
  }
  if (!reply.ok) {
    $("sign-in-error").textContent = (await reply.json()).error || reply.statusText;
    $("sign-in").hidden = false;
    return;
  }
  showDesk(await reply.json());
}

async function signIn(event) {
  event.preventDefault();
  const reply = await fetch("/api/session", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: $("token").value }),
  });
  $("token").value = "";
  const body = await reply.json();
  if (!reply.ok) {
    $("sign-in-error").textContent = body.error;
    return;
  }
  $("sign-in-error").textContent = "";
  showDesk(body);
}

async function signOut() {
  await fetch("/api/session", { method: "DELETE", credentials: "same-origin" });
  window.location.reload();
}

function showDesk(who) {
  me = who;
  $("sign-in").hidden = true;
  $("desk").hidden = false;
  $("who").textContent = (who.principal || "no sign-in") + " (" + who.role + ")";
  $("sign-out").hidden = who.auth === "none";
  if (!who.halts_allowed) {
    // A trader gets no halt control at all (and the gateway refuses its halts anyway).
    const killswitch = $("killswitch");
    if (killswitch) killswitch.remove();
    $("chart-note").textContent = "The chart is for risk operators (GetStatus is theirs).";
    for (const id of ["chart-rate", "chart-latency"]) { const chart = $(id); if (chart) chart.remove(); }
  }
  const codes = $("filter-code");
  if (codes.options.length === 1) {
    for (const code of who.codes) codes.append(new Option(code, code));
  }
  openEvents();
  openRejections();
  drawCharts();
}

// -- the event streams -------------------------------------------------------

function setLive(live) {
  const badge = $("live");
  badge.textContent = live ? "live" : "reconnecting";
  badge.className = "badge " + (live ? "live" : "down");
}

function openEvents() {
  if (mainEvents) mainEvents.close();
  mainEvents = new EventSource("/api/events");
  mainEvents.onopen = () => setLive(true);
  mainEvents.onerror = () => {
    setLive(false);
    if (mainEvents.readyState === EventSource.CLOSED) setTimeout(start, 2000);
  };
  mainEvents.addEventListener("accounts", (e) => onAccounts(JSON.parse(e.data)));
  mainEvents.addEventListener("portfolio", (e) => onPortfolio(JSON.parse(e.data)));
  mainEvents.addEventListener("halts", (e) => renderHalts(JSON.parse(e.data)));
  mainEvents.addEventListener("history", (e) => { samples = JSON.parse(e.data); drawCharts(); });
  mainEvents.addEventListener("stats", (e) => {
    samples.push(JSON.parse(e.data));
    drawCharts();
  });
  mainEvents.addEventListener("problem", (e) => onProblem(JSON.parse(e.data)));
}

function openRejections() {
  if (rejectionEvents) rejectionEvents.close();
  const query = new URLSearchParams();
  if ($("filter-account").value) query.set("account", $("filter-account").value);
  if ($("filter-code").value) query.set("code", $("filter-code").value);
  rejectionEvents = new EventSource("/api/rejections?" + query.toString());
  rejectionEvents.addEventListener("rejections", (e) => renderRejections(JSON.parse(e.data)));
  rejectionEvents.addEventListener("problem", (e) => onProblem(JSON.parse(e.data)));
  rejectionEvents.onerror = () => {
    if (rejectionEvents.readyState === EventSource.CLOSED) {
      onProblem({ source: "rejections", message: "the rejections could not be read with this filter" });
    }
  };
}

function onProblem(problem) {
  if (problem.message) problems.set(problem.source, problem.message);
  else problems.delete(problem.source);
  $("problems").textContent = [...problems.values()].join("\n");
}

// -- accounts and portfolios -------------------------------------------------

function onAccounts(list) {
  shownIds = list.account_ids;
  for (const id of shownIds) {
    if (!accounts.has(id)) accounts.set(id, { holdings: new Map(), totals: null, alerts: new Map() });
  }
  for (const id of [...accounts.keys()]) if (!shownIds.includes(id)) accounts.delete(id);
  $("accounts-note").textContent = list.truncated ? "Only the first " + shownIds.length + " accounts are shown." : "";
  const datalist = $("account-ids");
  datalist.replaceChildren(...shownIds.map((id) => new Option(id, id)));
  const filter = $("filter-account");
  const chosen = filter.value;
  filter.replaceChildren(new Option("all", ""), ...shownIds.map((id) => new Option(id, id)));
  filter.value = shownIds.includes(chosen) ? chosen : "";
  renderAccounts();
}

function alertKey(alert) {
  return (alert.code || "") + "|" + (alert.symbol || "");
}

function onPortfolio(update) {
  const account = accounts.get(update.account_id);
  if (!account || update.kind === "PORTFOLIO_UPDATE_KIND_HEARTBEAT") return;
  if (update.kind === "PORTFOLIO_UPDATE_KIND_SNAPSHOT") {
    account.holdings.clear();
    account.alerts.clear();
  }
  for (const holding of update.holdings) {
    if (holding.currency) currencies.set(holding.symbol, holding.currency);
    if (BigInt(holding.quantity) === 0n) account.holdings.delete(holding.symbol);
    else account.holdings.set(holding.symbol, holding);
  }
  if (update.totals) account.totals = update.totals;
  for (const alert of update.alerts) {
    if (RAISED.has(alert.kind)) account.alerts.set(alertKey(alert), alert);
    else account.alerts.delete(alertKey(alert));
  }
  renderAccounts();
}

// P&L is coloured by its sign; values and costs are not.
function moneyCell(fixed, currency, className) {
  const colour = className === "unrealized" || className === "realized";
  return el("td", formatMoney(fixed, currency), className + " " + (colour ? signClass(fixed) : "money"));
}

// The margin columns of a row: the figures of a margined account (PortfolioTotals.margined),
// blank cells for any other row; none at all while no account shown is margined.
function marginCells(totals, marginShown) {
  if (!marginShown) return [];
  if (!totals || !totals.margined) return [el("td"), el("td"), el("td"), el("td")];
  const currency = totals.currency;
  return [moneyCell(totals.equity, currency, "equity"),
    moneyCell(totals.margin_used, currency, "margin-used"),
    el("td", formatMoney(totals.margin_excess, currency), "margin-excess " + signClass(totals.margin_excess)),
    moneyCell(totals.maintenance_margin, currency, "maintenance-margin")];
}

function renderAccounts() {
  const body = $("accounts").tBodies[0];
  const rows = [];
  const marginShown = shownIds.some((id) => {
    const account = accounts.get(id);
    return Boolean(account && account.totals && account.totals.margined);
  });
  for (const header of $("accounts").querySelectorAll("th.margin")) header.hidden = !marginShown;
  for (const id of shownIds) {
    const account = accounts.get(id);
    if (!account) continue;
    const totals = account.totals;
    const currency = totals ? totals.currency : "";
    const row = el("tr");
    row.dataset.account = id;
    row.append(el("td", id, "account"), el("td"), el("td"), el("td"));
    if (totals) {
      row.append(moneyCell(totals.market_value, currency, "market-value"),
        moneyCell(totals.cost_basis, currency, "cost-basis"),
        moneyCell(totals.unrealized_pnl, currency, "unrealized"),
        moneyCell(totals.realized_pnl, currency, "realized"));
    } else {
      row.append(el("td", "waiting…", "market-value"), el("td"), el("td"), el("td"));
    }
    row.append(...marginCells(totals, marginShown));
    row.append(el("td", account.alerts.size ? String(account.alerts.size) : "", "alerts"));
    rows.push(row);
    for (const holding of [...account.holdings.values()].sort((a, b) => a.symbol.localeCompare(b.symbol))) {
      const line = el("tr", null, "holding");
      line.dataset.account = id;
      line.dataset.symbol = holding.symbol;
      const priced = holding.valuation === "VALUATION_PRICED";
      line.append(el("td", holding.symbol, "symbol"),
        el("td", formatQuantity(holding.quantity), "money quantity"),
        el("td", formatMoney(holding.average_cost, holding.currency), "money average-cost"),
        el("td", priced ? formatMoney(holding.last_price, holding.currency) : "no price", "money last-price"),
        priced ? moneyCell(holding.market_value, holding.currency, "market-value") : el("td", "", "money"),
        moneyCell(holding.cost_basis, holding.currency, "cost-basis"),
        priced ? moneyCell(holding.unrealized_pnl, holding.currency, "unrealized") : el("td", "", "money"),
        el("td"), ...marginCells(null, marginShown), el("td"));
      rows.push(line);
    }
  }
  body.replaceChildren(...rows);
  renderAlerts();
}

// A margin call's figures are money (observed = equity, limit = maintenance margin): shown
// formatted like the other money on the page rather than as the raw integers of its message.
function alertMessage(alert, currency) {
  if (alert.kind !== "ALERT_KIND_MARGIN_CALL") return alert.message;
  return "equity " + formatMoney(alert.observed, currency) + " is below the maintenance margin " +
    formatMoney(alert.limit, currency);
}

function renderAlerts() {
  const items = [];
  for (const [id, account] of accounts) {
    for (const alert of account.alerts.values()) {
      const message = alertMessage(alert, account.totals ? account.totals.currency : "");
      const item = el("li", id + ": " + short(alert.kind, "ALERT_KIND_") + " " +
        short(alert.code, "REJECT_CODE_") + (alert.symbol ? " " + alert.symbol : "") +
        (message ? ": " + message : ""));
      item.dataset.account = id;
      item.dataset.kind = short(alert.kind, "ALERT_KIND_");
      items.push(item);
    }
  }
  $("alerts").replaceChildren(...(items.length ? items : [el("li", "none", "note")]));
}

// -- halts and the kill switch -----------------------------------------------

function renderHalts(halts) {
  const body = $("halts").tBodies[0];
  const rows = halts.map((halt) => {
    const scope = short(halt.scope, "HALT_SCOPE_");
    const mode = short(halt.mode, "HALT_MODE_");
    const row = el("tr");
    row.dataset.scope = scope;
    row.dataset.target = halt.target;
    row.append(el("td", scope), el("td", halt.target || "everything"), el("td", mode, "mode-" + mode),
      el("td", halt.reason), el("td", halt.halted_by), el("td", formatTime(halt.halted_at_unix_ms)),
      el("td", Number(halt.expires_at_unix_ms) ? formatTime(halt.expires_at_unix_ms) : "until lifted"));
    const control = el("td", null, "control");
    if (me && me.halts_allowed) {
      const lift = el("button", "Lift…");
      lift.type = "button";
      lift.addEventListener("click", () => review({ scope, target: halt.target, mode: "ACTIVE", reason: "", ttl_seconds: 0 }));
      control.append(lift);
    }
    row.append(control);
    return row;
  });
  body.replaceChildren(...(rows.length ? rows : [(() => { const r = el("tr"); r.append(el("td", "no halt in force", "note")); return r; })()]));
}

function haltForm() {
  const ttl = $("halt-ttl").value.trim();
  return {
    scope: $("halt-scope").value, target: $("halt-target").value.trim(), mode: $("halt-mode").value,
    reason: $("halt-reason").value.trim(), ttl_seconds: ttl === "" ? 0 : Number(ttl),
  };
}

function review(halt) {
  const result = $("halt-result");
  result.className = "error";
  if (halt.scope !== "GLOBAL" && !halt.target) { result.textContent = "Name the " + halt.scope.toLowerCase() + " to halt."; return; }
  if (halt.mode !== "ACTIVE" && !halt.reason) { result.textContent = "A halt needs a reason."; return; }
  if (!Number.isInteger(halt.ttl_seconds) || halt.ttl_seconds < 0) { result.textContent = "TTL: whole seconds, 0 or more."; return; }
  result.textContent = "";
  pendingHalt = halt;
  const what = halt.scope === "GLOBAL" ? "EVERYTHING" : halt.scope.toLowerCase() + " " + halt.target;
  const action = halt.mode === "ACTIVE" ? "Lift the halt on " + what : "Set " + halt.mode + " on " + what;
  $("halt-summary").textContent = action + (halt.reason ? ", reason: \u201c" + halt.reason + "\u201d" : "") +
    (halt.mode !== "ACTIVE" ? (halt.ttl_seconds ? ", for " + halt.ttl_seconds + " s" : ", until lifted") : "") + "?";
  $("halt-confirm").hidden = false;
  $("halt-confirm-button").focus();
}

async function confirmHalt() {
  const halt = pendingHalt;
  pendingHalt = null;
  $("halt-confirm").hidden = true;
  if (!halt) return;
  const reply = await fetch("/api/halt", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(halt),
  });
  const body = await reply.json();
  const result = $("halt-result");
  if (!reply.ok) {
    result.className = "error";
    result.textContent = "Refused: " + body.error;
    return;
  }
  result.className = "note";
  result.textContent = "Done. " + body.halts.length + " halt(s) in force.";
  renderHalts(body.halts);
}

// -- the chart: SVG polylines over the last five minutes ----------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawChart(id, series, unit) {
  const chart = $(id);
  if (!chart) return;
  const width = 600, height = 140, top = 14, bottom = 126;
  const now = Date.now();
  const recent = samples.filter((s) => s.t >= now - WINDOW_MS);
  let most = 0;
  for (const { key } of series) for (const s of recent) if (s[key] !== null && s[key] > most) most = s[key];
  most = most > 0 ? most * 1.1 : 1;
  const y = (value) => bottom - (value / most) * (bottom - top);
  const x = (t) => ((t - (now - WINDOW_MS)) / WINDOW_MS) * width;
  const parts = [svg("line", { x1: 0, x2: width, y1: bottom, y2: bottom, class: "grid" }),
    svg("text", { x: width / 2 - 60, y: (top + bottom) / 2 }, recent.length ? "" : "waiting for samples…"),
    svg("line", { x1: 0, x2: width, y1: top, y2: top, class: "grid" }),
    svg("text", { x: 4, y: top - 3 }, most.toFixed(most < 10 ? 1 : 0) + " " + unit),
    svg("text", { x: 4, y: height - 2 }, "-5 min"), svg("text", { x: width - 30, y: height - 2 }, "now")];
  let legend = 70;
  for (const { key, label } of series) {
    const points = recent.filter((s) => s[key] !== null).map((s) => x(s.t).toFixed(1) + "," + y(s[key]).toFixed(1));
    parts.push(svg("polyline", { points: points.join(" "), class: key.replace("_us", "") }));
    const last = recent.length ? recent[recent.length - 1][key] : null;
    parts.push(svg("text", { x: legend, y: top - 3, class: "legend-" + key },
      label + ": " + (last === null || last === undefined ? "–" : last.toFixed(last < 10 ? 1 : 0))));
    legend += 130;
  }
  chart.replaceChildren(...parts);
}

function drawCharts() {
  samples = samples.filter((s) => s.t >= Date.now() - WINDOW_MS);
  drawChart("chart-rate", [{ key: "rate", label: "decisions/s" }], "/s");
  drawChart("chart-latency", [{ key: "p50_us", label: "p50 µs" }, { key: "p99_us", label: "p99 µs" }], "µs");
}

// -- rejections --------------------------------------------------------------

function renderRejections(rows) {
  const body = $("rejections").tBodies[0];
  if (!rows.length) {
    const none = el("tr");
    none.append(el("td", "no rejection in the audit trail's latest entries", "note"));
    body.replaceChildren(none);
    return;
  }
  body.replaceChildren(...rows.map((r) => {
    const row = el("tr");
    row.dataset.order = r.order_id;
    row.append(el("td", formatTime(r.decided_at_unix_ms)), el("td", r.account_id), el("td", r.order_id),
      el("td", r.symbol), el("td", short(r.side, "SIDE_")), el("td", formatQuantity(r.quantity), "money"),
      el("td", formatMoney(r.price, currencies.get(r.symbol) || ""), "money"),
      el("td", r.codes.map((c) => short(c, "REJECT_CODE_")).join(", "), "codes"), el("td", r.principal));
    return row;
  }));
}

// -- wiring ------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("halt-form").addEventListener("submit", (event) => { event.preventDefault(); review(haltForm()); });
  $("halt-confirm-button").addEventListener("click", confirmHalt);
  $("halt-cancel").addEventListener("click", () => { pendingHalt = null; $("halt-confirm").hidden = true; });
  $("filter-account").addEventListener("change", openRejections);
  $("filter-code").addEventListener("change", openRejections);
  setInterval(drawCharts, 5000);  // the time axis moves on even when no sample arrives
  start();
});
