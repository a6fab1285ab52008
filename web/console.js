/* pushsrv web console: REST (login, keys, orders) + Socket.IO pushes (balance,
 * positions, pnl, orders, stream_status). Plain browser JavaScript, no build step.
 *
 * Money values arrive as decimal strings and are shown exactly as received; the
 * only float conversion is for the PnL chart's y coordinates. All data is put in
 * the page with textContent (never innerHTML). */
"use strict";

const TOKEN_KEY = "pushsrv.token";
const REFRESH_KEY = "pushsrv.refresh";   // the session's rotating refresh token
const REFRESH_AT = 0.8;                  // refresh at 80 % of the access token's lifetime
const SESSION_CALLS = ["/api/auth/login", "/api/auth/refresh", "/api/auth/logout"];
const TYPES = ["balance", "positions", "pnl", "orders"];
const CHART_POINTS = 60;
const PUSH_HZ = 2;                       // max_hz of every subscribed type
const MONEY_PLACES = 2;                  // balances and PnL are shown to the cent
const FINAL_EXIT = ["filled", "failed"];             // an exit other than "working"

const state = {
  token: null,
  refreshToken: null,
  refreshTimer: null,
  socket: null,
  keys: [],            // GET /api/exchange/keys
  activeKeyId: null,   // the key whose data is shown and used for orders
  latest: {},          // key_id -> {type -> envelope}
  highest: {},         // key_id -> {type -> {epoch, seq}}: the newest position seen
  streams: {},         // key_id -> stream_status payload
  pnlSeries: {},       // key_id -> [unrealized_pnl string, ...] (last CHART_POINTS)
};

const $ = (id) => document.getElementById(id);

/* ---------- small DOM helpers ---------- */

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

/** A table row of text cells; `fields` names each cell (data-field) for tests. */
function row(values, fields, attrs) {
  const tr = el("tr", null, attrs);
  values.forEach((v, i) => tr.appendChild(el("td", v ?? "-", fields ? { "data-field": fields[i] } : {})));
  return tr;
}

function emptyRow(tbody, cols, text) {
  const td = el("td", text, { colspan: cols });
  td.className = "empty";
  const tr = el("tr");
  tr.appendChild(td);
  tbody.replaceChildren(tr);
}

/** Colour a cell by the sign of a decimal string, without converting it. */
function signClass(s) {
  if (typeof s !== "string") return "";
  if (s.startsWith("-")) return /[1-9]/.test(s) ? "neg" : "";
  return /[1-9]/.test(s) ? "pos" : "";
}

/** A decimal string rounded half away from zero to `places` decimals, by string
 * arithmetic (no float): "10001.5471032" -> "10001.55". Other values unchanged. */
function roundDecimal(s, places) {
  if (typeof s !== "string" || !/^-?\d+(\.\d+)?$/.test(s)) return s;
  const neg = s.startsWith("-");
  const [int, frac = ""] = (neg ? s.slice(1) : s).split(".");
  if (frac.length <= places) return s;
  let digits = (int + frac.slice(0, places)).split("").map(Number);
  if (Number(frac[places]) >= 5) {
    let i = digits.length - 1;
    while (i >= 0 && digits[i] === 9) { digits[i] = 0; i -= 1; }
    if (i < 0) digits.unshift(1); else digits[i] += 1;
  }
  const all = digits.join("");
  const head = all.slice(0, all.length - places) || "0";
  const out = places ? head + "." + all.slice(all.length - places) : head;
  return neg && /[1-9]/.test(out) ? "-" + out : out;
}

/** A money figure (balance, PnL) to the cent. */
function money(s) { return s === undefined || s === null ? s : roundDecimal(s, MONEY_PLACES); }

/** A price that is only meaningful when above zero (a liquidation price of 0 means none). */
function positive(s) { return typeof s === "string" && /[1-9]/.test(s) && !s.startsWith("-") ? s : null; }

/** The account's unrealized PnL, one figure for every panel: the newest of the
 * `pnl` and `balance` pushes of the active key (by as_of). */
function unrealizedNow() {
  const p = current("pnl"), b = current("balance");
  if (p && (!b || p.as_of >= b.as_of)) return p.data.unrealized_pnl;
  return b ? b.data.total_unrealized_pnl : null;
}

/** Show a decimal string as-is; `signed` colours it by sign (for PnL figures). */
function setFigure(id, value, signed) {
  const node = $(id);
  node.textContent = value ?? "-";
  node.className = signed ? signClass(value) : "";
}

function showMessage(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = kind || "error";
  box.hidden = !text;
}

function button(text, testid, onClick, secondary) {
  const b = el("button", text, { type: "button", "data-testid": testid });
  if (secondary) b.className = "secondary";
  b.addEventListener("click", onClick);
  return b;
}

/* ---------- REST ---------- */

/** fetch JSON with the bearer token; throws Error(error.message) on a non-2xx answer. */
async function api(method, path, body, retried) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    const e = new Error(err.message || `HTTP ${resp.status}`);
    e.status = resp.status;
    e.code = err.code;
    if (resp.status === 401 && state.token && !SESSION_CALLS.includes(path)) {
      // an expired access token: one refresh, then the call again; else log in again
      if (!retried && await refreshTokens()) return api(method, path, body, true);
      logout("Session expired: log in again.");
    }
    throw e;
  }
  return data;
}

/** Run an async action, showing its error message to the user. */
async function guarded(action) {
  try {
    return await action();
  } catch (e) {
    showMessage(e.message || String(e), "error");
    return undefined;
  }
}

/* ---------- login / logout ---------- */

async function login(ev) {
  ev.preventDefault();
  await guarded(async () => {
    const data = await api("POST", "/api/auth/login",
      { username: $("login-username").value.trim(), password: $("login-password").value });
    $("login-password").value = "";
    keepTokens(data);
    await start();
  });
}

/** Store a token pair from login or refresh and schedule the next refresh. */
function keepTokens(data) {
  state.token = data.access_token;
  state.refreshToken = data.refresh_token || null;
  sessionStorage.setItem(TOKEN_KEY, state.token);
  if (state.refreshToken) sessionStorage.setItem(REFRESH_KEY, state.refreshToken);
  if (state.socket) state.socket.auth = { token: state.token };  // used by its reconnects
  scheduleRefresh(Number(data.expires_in) || 0);
}

function scheduleRefresh(expiresInS) {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = null;
  if (!state.refreshToken || !(expiresInS > 0)) return;
  state.refreshTimer = setTimeout(() => refreshTokens(), expiresInS * REFRESH_AT * 1000);
}

let refreshing = null;  // one refresh at a time: a second one would present a rotated token

/** POST /api/auth/refresh with the stored refresh token; true when a new pair came.
 * A refused refresh (expired, revoked, or a rotated token) ends the session here. */
function refreshTokens() {
  if (!state.refreshToken) return Promise.resolve(false);
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      keepTokens(await api("POST", "/api/auth/refresh", { refresh_token: state.refreshToken }));
      return true;
    } catch (e) {
      if (e.status === 401) logout("Session ended: log in again.");
      else scheduleRefresh(10 / REFRESH_AT);  // the server was unreachable: try again in 10 s
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

let lastLogout = null;  // the promise of the last POST /api/auth/logout (its status)

function logout(reason) {
  if (state.socket) state.socket.disconnect();
  if (state.refreshToken && reason === "") {  // the user's own logout ends the session
    lastLogout = fetch("/api/auth/logout", { method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: state.refreshToken }) }).then((r) => r.status, () => 0);
  }
  clearTimeout(state.refreshTimer);
  clearInterval(state.notifyTimer);
  state.notifyTimer = null;
  sessionStorage.removeItem(REFRESH_KEY);
  Object.assign(state, { token: null, refreshToken: null, refreshTimer: null, socket: null, keys: [], activeKeyId: null, latest: {}, streams: {}, pnlSeries: {} });
  sessionStorage.removeItem(TOKEN_KEY);
  $("app-view").hidden = true;
  $("login-view").hidden = false;
  $("logout").hidden = true;
  $("whoami").textContent = "";
  setConn("offline", "");
  showMessage(typeof reason === "string" ? reason : "", "info");
}

/** After a token is known: who am I, the keys, then the socket. */
async function start() {
  const me = await api("GET", "/api/auth/me");
  $("whoami").textContent = me.username + (me.is_admin ? " (admin)" : "");
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("logout").hidden = false;
  showMessage("");
  await loadKeys();
  connectSocket();
  loadNotifications().catch(() => {});  // the panel stays empty; the rest works
  if (!state.notifyTimer) state.notifyTimer = setInterval(() => loadNotifications().catch(() => {}), 10000);
}

/* ---------- API keys ---------- */

async function loadKeys() {
  state.keys = await api("GET", "/api/exchange/keys");
  if (!state.keys.some((k) => k.id === state.activeKeyId)) {
    state.activeKeyId = state.keys.length ? state.keys[0].id : null;
  }
  renderKeys();
  renderAll();
}

function renderKeys() {
  const body = $("keys-body");
  if (!state.keys.length) emptyRow(body, 8, "No API key yet: add one below.");
  else body.replaceChildren(...state.keys.map((k) => {
    const tr = row([k.id, k.exchange, k.network || (k.testnet ? "testnet" : "mainnet"), k.label, k.api_key_masked, k.status],
      ["id", "exchange", "net", "label", "api_key_masked", "status"], { "data-testid": "key-row", "data-key-id": k.id });
    const st = state.streams[k.id];
    const badge = el("span", st ? st.state : "-", { "data-testid": "stream-status", title: st ? "since " + new Date(st.since).toLocaleTimeString() : "" });
    badge.className = st ? "badge state-" + st.state : "";
    tr.appendChild(el("td")).appendChild(badge);
    tr.appendChild(el("td")).appendChild(button("Delete", "key-delete", () => deleteKey(k), true));
    return tr;
  }));
  const sel = $("active-key");
  sel.replaceChildren(...state.keys.map((k) =>
    el("option", `#${k.id} ${k.exchange}${k.testnet ? " testnet" : ""} ${k.label || ""}`.trim(), { value: k.id })));
  if (state.activeKeyId !== null) sel.value = String(state.activeKeyId);
}

async function addKey(ev) {
  ev.preventDefault();
  await guarded(async () => {
    const key = await api("POST", "/api/exchange/keys", {
      exchange: $("key-exchange").value, api_key: $("key-api-key").value.trim(),
      api_secret: $("key-api-secret").value.trim(), testnet: $("key-testnet").checked,
      label: $("key-label").value.trim(),
    });
    $("key-form").reset();
    showMessage(`Key #${key.id} added.`, "info");
    await loadKeys();
    subscribe();
  });
}

async function deleteKey(k) {
  if (!window.confirm(`Delete key #${k.id} (${k.exchange} ${k.api_key_masked})?`)) return;
  await guarded(async () => {
    await api("DELETE", `/api/exchange/keys/${k.id}`);
    delete state.latest[k.id];
    delete state.streams[k.id];
    delete state.pnlSeries[k.id];
    showMessage(`Key #${k.id} deleted.`, "info");
    await loadKeys();
  });
}

/* ---------- Socket.IO ---------- */

function setConn(text, cls) {
  const badge = $("conn-status");
  badge.textContent = text;
  badge.className = "badge " + (cls || "");
}

function connectSocket() {
  if (state.socket) state.socket.disconnect();
  const socket = io({ auth: { token: state.token }, transports: ["websocket"] });
  state.socket = socket;
  socket.on("connect", () => { setConn("online", "online"); subscribe(); });
  socket.on("disconnect", (reason) => setConn("offline: " + reason, "error"));
  socket.on("connect_error", (err) => {
    setConn("connect error", "error");
    if (err && err.message === "unauthorized") {
      // the access token expired while offline: refresh, then reconnect with the new one
      refreshTokens().then((ok) => { if (ok) socket.connect(); else logout("Session expired: log in again."); });
    }
  });
  for (const type of TYPES) socket.on(type, (env) => onPush(type, env));
  socket.on("stream_status", (st) => { state.streams[st.key_id] = st; renderKeys(); });
  socket.on("error", (err) => showMessage((err && err.message) || "server error", "error"));
}

/** subscribe to the four types of every key of the user, one subscribe per key,
 * resuming from the newest (epoch, seq) already held of each type (after a
 * reconnect nothing current is sent again). */
function subscribe() {
  if (!state.socket || !state.socket.connected || !state.keys.length) return;
  for (const key of state.keys) {
    const held = state.highest[key.id] || {};
    const since = {};
    for (const type of TYPES) if (held[type]) since[type] = held[type];
    // one rate for every type, so that the balance, the PnL panel and the positions
    // move together (each type's own default rate made them disagree on screen)
    const body = { types: TYPES, key_id: key.id, max_hz: PUSH_HZ };
    if (Object.keys(since).length) body.since = since;
    state.socket.emit("subscribe", body, (ack) => {
      if (!ack || !ack.ok) showMessage("subscribe failed: " + ((ack && ack.error && ack.error.message) || "no answer"), "error");
    });
  }
}

/** True for a true duplicate only: the same epoch and a seq not above the highest
 * seen of that key and type. A new epoch is always taken (the server restarted or
 * the stream moved), and a seq gap is conflation, not loss (CONTRACT.md). */
function isDuplicate(type, env) {
  const held = (state.highest[env.key_id] || {})[type];
  return Boolean(held) && held.epoch === env.epoch && env.seq <= held.seq;
}

function onPush(type, env) {
  if (isDuplicate(type, env)) return;
  const perKey = (state.latest[env.key_id] = state.latest[env.key_id] || {});
  if (env.seq > 0) {  // seq 0: a REST snapshot outside the pushed sequence
    const highest = (state.highest[env.key_id] = state.highest[env.key_id] || {});
    highest[type] = { epoch: env.epoch, seq: env.seq };
  }
  perKey[type] = env;
  if (type === "pnl") {
    const series = (state.pnlSeries[env.key_id] = state.pnlSeries[env.key_id] || []);
    series.push(env.data.unrealized_pnl);
    if (series.length > CHART_POINTS) series.shift();
  }
  if (env.key_id === state.activeKeyId) render(type);
}

/* ---------- rendering of the pushed data ---------- */

function current(type) {
  return (state.latest[state.activeKeyId] || {})[type];
}

function meta(env) {
  if (!env) return "";
  return `seq ${env.seq}${env.epoch ? " @" + String(env.epoch).slice(-6) : ""} · ${env.source}${env.stale ? " · STALE" : ""} · ${new Date(env.as_of).toLocaleTimeString()}`;
}

function renderAll() { TYPES.forEach(render); }

function render(type) {
  const env = current(type);
  if ($(type + "-meta")) $(type + "-meta").textContent = meta(env);
  ({ balance: renderBalance, positions: renderPositions, pnl: renderPnl, orders: renderOrders })[type](env && env.data);
}

function renderBalance(b) {
  setFigure("bal-wallet", money(b && b.total_wallet_balance));
  setFigure("bal-unrealized", money(unrealizedNow()), true);
  setFigure("bal-margin", money(b && b.total_margin_balance));
  setFigure("bal-available", money(b && b.available_balance));
  const body = $("assets-body");
  if (!b || !b.assets.length) return emptyRow(body, 5, b ? "No assets." : "Waiting for data...");
  body.replaceChildren(...b.assets.map((a) => row(
    [a.asset, money(a.wallet_balance), money(a.available_balance), money(a.unrealized_pnl), money(a.margin_balance)],
    ["asset", "wallet_balance", "available_balance", "unrealized_pnl", "margin_balance"], { "data-testid": "asset-row" })));
}

function renderPositions(list) {
  const body = $("positions-body");
  if (!list || !list.length) return emptyRow(body, 10, list ? "No open position." : "Waiting for data...");
  body.replaceChildren(...list.map((p) => {
    const tr = row([p.symbol, p.side, p.size, p.entry_price, p.mark_price, money(p.unrealized_pnl), p.leverage,
      positive(p.liquidation_price), protectionText(p)],
      ["symbol", "side", "size", "entry_price", "mark_price", "unrealized_pnl", "leverage", "liquidation_price", "protection"],
      { "data-testid": "position-row", "data-symbol": p.symbol });
    tr.children[5].className = signClass(p.unrealized_pnl);
    const actions = tr.appendChild(el("td"));
    actions.appendChild(button("Protect", "position-protect", () => editProtection(p), true));
    actions.appendChild(button("Close", "position-close", () => closePosition(p.symbol), true));
    return tr;
  }));
}

function renderPnl(p) {
  setFigure("pnl-unrealized", money(unrealizedNow()), true);
  setFigure("pnl-realized", money(p && p.realized_pnl), true);
  if (p) setFigure("bal-unrealized", money(unrealizedNow()), true);
  drawChart(state.pnlSeries[state.activeKeyId] || []);
}

/** Polyline of the last unrealized PnL values; y scaled to their range (0 included). */
function drawChart(series) {
  const W = 300, H = 80, PAD = 4;
  const ys = series.map(Number).filter(Number.isFinite);  // the one place floats are used
  if (!ys.length) { $("pnl-line").setAttribute("points", ""); return; }
  const lo = Math.min(0, ...ys), hi = Math.max(0, ...ys);
  const span = hi - lo || 1;
  const y = (v) => (H - PAD - ((v - lo) / span) * (H - 2 * PAD)).toFixed(1);
  const step = ys.length > 1 ? W / (CHART_POINTS - 1) : 0;
  const x0 = W - step * (ys.length - 1);
  $("pnl-line").setAttribute("points", ys.map((v, i) => `${(x0 + i * step).toFixed(1)},${y(v)}`).join(" "));
  $("pnl-zero").setAttribute("y1", y(0));
  $("pnl-zero").setAttribute("y2", y(0));
}

function renderOrders(list) {
  const body = $("orders-body");
  if (!list || !list.length) return emptyRow(body, 10, list ? "No open order." : "Waiting for data...");
  body.replaceChildren(...list.map((o) => {
    const tr = row([o.client_order_id, o.symbol, o.side, o.type, o.status, o.price, o.trigger_price, o.quantity, o.filled_quantity],
      ["client_order_id", "symbol", "side", "type", "status", "price", "trigger_price", "quantity", "filled_quantity"],
      { "data-testid": "order-row", "data-client-order-id": o.client_order_id });
    const leg = LEG_KINDS[o.type];
    tr.appendChild(el("td")).appendChild(leg
      ? button("Remove", "leg-remove", () => removeLeg(o.symbol, leg), true)
      : button("Cancel", "order-cancel", () => cancelOrder(o.client_order_id), true));
    return tr;
  }));
}

/* ---------- orders and positions ---------- */

function requireKey() {
  if (state.activeKeyId === null) throw new Error("Add an API key first.");
  return state.activeKeyId;
}

async function placeOrder(ev) {
  ev.preventDefault();
  await guarded(async () => {
    const type = $("order-type").value;
    const order = { key_id: requireKey(), symbol: $("order-symbol").value.trim().toUpperCase(),
      side: $("order-side").value, type, quantity: $("order-quantity").value.trim() };
    if (type === "LIMIT") order.price = $("order-price").value.trim();
    $("order-submit").disabled = true;
    try {
      const { trade } = await api("POST", "/api/orders", order);
      $("order-result").textContent = `${trade.side} ${trade.quantity} ${trade.symbol}: ${trade.status}` +
        (trade.entry_price ? ` at ${trade.entry_price}` : "") + ` (${trade.client_order_id})`;
      showMessage("");
    } finally {
      $("order-submit").disabled = false;
    }
  });
}

async function cancelOrder(clientOrderId) {
  await guarded(async () => {
    const { trade } = await api("DELETE", `/api/orders/${encodeURIComponent(clientOrderId)}?key_id=${requireKey()}`);
    showMessage(`Order ${clientOrderId}: ${trade.status}.`, "info");
  });
}

async function closePosition(symbol) {
  await guarded(async () => {
    const res = await api("POST", "/api/positions/close", { key_id: requireKey(), symbol });
    showMessage(`Closing ${symbol}: exit #${res.exit.id} ${res.exit.status}` +
      (res.started ? "." : " (an exit was already working)."), "info");
    followExit(symbol, res.exit);
  });
}

/** Follow an exit (GET /api/exits/{id}) until it ends, keeping the banner current. */
function followExit(symbol, exit) {
  if (FINAL_EXIT.includes(exit.status)) return;
  setTimeout(() => guarded(async () => {
    if (!state.token) return;
    const now = await api("GET", `/api/exits/${exit.id}`);
    const e = now.exit;
    showMessage(`Closing ${symbol}: exit #${e.id} ${e.status}.`, FINAL_EXIT.includes(e.status) && e.status !== "filled" ? "error" : "info");
    followExit(symbol, e);
  }), 1000);
}

/* ---------- protection: stop-loss, take-profit, trailing stop ---------- */

const LEG_KINDS = { STOP_MARKET: "stop_loss", TAKE_PROFIT_MARKET: "take_profit", TRAILING_STOP_MARKET: "trailing_stop" };

/** "SL 59000 · TP 62000 · TS 1.5%" from a positions row (decimal strings as sent). */
function protectionText(p) {
  const parts = [];
  if (p.stop_loss) parts.push(`SL ${p.stop_loss}`);
  if (p.take_profit) parts.push(`TP ${p.take_profit}`);
  if (p.trailing_stop) parts.push(`TS ${p.trailing_stop.callback_rate}%` +
    (p.trailing_stop.activation_price ? ` from ${p.trailing_stop.activation_price}` : ""));
  return parts.length ? parts.join(" · ") : "-";
}

/** Fill the protection form with a position's symbol and current legs. */
function editProtection(p) {
  $("protect-symbol").value = p.symbol;
  $("protect-sl").value = p.stop_loss || "";
  $("protect-tp").value = p.take_profit || "";
  $("protect-rate").value = p.trailing_stop ? p.trailing_stop.callback_rate : "";
  $("protect-activation").value = p.trailing_stop && p.trailing_stop.activation_price || "";
  $("protect-sl").focus();
}

/** PUT /api/positions/protection: a filled field sets its leg, an emptied one that
 * the position has removes it (null), an empty one it does not have is left out. */
async function setProtection(ev) {
  ev.preventDefault();
  await guarded(async () => {
    const symbol = $("protect-symbol").value.trim().toUpperCase();
    const held = (current("positions")?.data || []).find((p) => p.symbol === symbol) || {};
    const body = { key_id: requireKey(), symbol, mode: $("protect-mode").value };
    const sl = $("protect-sl").value.trim(), tp = $("protect-tp").value.trim();
    const rate = $("protect-rate").value.trim(), act = $("protect-activation").value.trim();
    if (sl) body.stop_loss = { trigger_price: sl }; else if (held.stop_loss) body.stop_loss = null;
    if (tp) body.take_profit = { trigger_price: tp }; else if (held.take_profit) body.take_profit = null;
    if (rate) body.trailing_stop = act ? { callback_rate: rate, activation_price: act } : { callback_rate: rate };
    else if (held.trailing_stop) body.trailing_stop = null;
    const prot = await api("PUT", "/api/positions/protection", body);
    $("protect-result").textContent = `${prot.symbol} (${prot.mode}): ` + Object.entries(prot.legs)
      .filter(([, leg]) => leg).map(([kind, leg]) => `${kind} ${leg.status}`).join(", ");
    showMessage("");
  });
}

async function removeProtection() {
  await guarded(async () => {
    const symbol = $("protect-symbol").value.trim().toUpperCase();
    await api("DELETE", `/api/positions/protection?key_id=${requireKey()}&symbol=${encodeURIComponent(symbol)}`);
    $("protect-result").textContent = `${symbol}: protection removed`;
  });
}

async function removeLeg(symbol, kind) {
  await guarded(async () => {
    await api("PUT", "/api/positions/protection", { key_id: requireKey(), symbol, [kind]: null });
    showMessage(`${symbol}: ${kind.replace("_", "-")} removed.`, "info");
  });
}

/* ---------- phone notifications ---------- */

function when(ms) { return ms ? new Date(ms).toLocaleTimeString() : "-"; }

async function loadNotifications() {
  const [devices, sent] = await Promise.all([api("GET", "/api/devices"), api("GET", "/api/notifications")]);
  const dbody = $("devices-body");
  if (!devices.length) emptyRow(dbody, 6, "No device registered (POST /api/devices from the app).");
  else dbody.replaceChildren(...devices.map((d) => {
    const tr = row([d.id, d.platform, d.locale, when(d.created_at), when(d.last_sent_at)],
      ["id", "platform", "locale", "created_at", "last_sent_at"], { "data-testid": "device-row" });
    tr.appendChild(el("td")).appendChild(button("Remove", "device-delete", () => deleteDevice(d), true));
    return tr;
  }));
  const nbody = $("notifications-body");
  if (!sent.length) emptyRow(nbody, 7, "No notification yet.");
  else nbody.replaceChildren(...sent.map((n) => row(
    [when(n.created_at), n.device_id, n.event_type, n.title, n.body, n.status + (n.error ? ` (${n.error})` : ""), n.attempts],
    ["created_at", "device_id", "event_type", "title", "body", "status", "attempts"], { "data-testid": "notification-row" })));
}

async function deleteDevice(d) {
  await guarded(async () => {
    await api("DELETE", `/api/devices/${d.id}`);
    await loadNotifications();
  });
}

/* ---------- wiring ---------- */

function init() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout(""));
  $("key-form").addEventListener("submit", addKey);
  $("order-form").addEventListener("submit", placeOrder);
  $("protect-form").addEventListener("submit", setProtection);
  $("protect-remove").addEventListener("click", removeProtection);
  $("notify-refresh").addEventListener("click", () => guarded(loadNotifications));
  $("order-type").addEventListener("change", () => {
    $("order-price").disabled = $("order-type").value !== "LIMIT";
  });
  $("active-key").addEventListener("change", () => {
    state.activeKeyId = Number($("active-key").value);
    renderAll();
  });
  renderAll();
  state.token = sessionStorage.getItem(TOKEN_KEY);
  state.refreshToken = sessionStorage.getItem(REFRESH_KEY);
  // after a page reload the access token's age is unknown: refresh first when possible
  if (state.refreshToken) guarded(async () => { if (await refreshTokens()) await start(); });
  else if (state.token) guarded(start);  // a stale token: the 401 handler in api() logs out
}

init();
