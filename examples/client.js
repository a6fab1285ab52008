// A small Socket.IO client for mobile/web developers (socket.io-client v4).
//   npm install socket.io-client@4
//   node examples/client.js http://127.0.0.1:5000 demo <password>
// The password is used once: the session is then kept with the refresh token
// (POST /api/auth/refresh at 80 % of the access token's lifetime; each refresh returns
// a new refresh token and the old one stops working). Reconnects present the newest
// access token. Ctrl-C logs out.
const { io } = require("socket.io-client");

async function post(url, body) {
  return fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

async function main() {
  const [url = "http://127.0.0.1:5000", username = "demo", password] = process.argv.slice(2);
  if (!password) throw new Error("usage: node client.js URL USERNAME PASSWORD");
  const res = await post(`${url}/api/auth/login`, { username, password });
  if (!res.ok) throw new Error(`login failed: ${res.status} ${await res.text()}`);
  // {access_token, token_type, expires_in, refresh_token, refresh_expires_in, session_id}
  let tokens = await res.json();

  let timer;
  const scheduleRefresh = () => {
    timer = setTimeout(async () => {
      try {
        const r = await post(`${url}/api/auth/refresh`, { refresh_token: tokens.refresh_token });
        if (r.status === 401) {
          console.error("session ended:", (await r.json()).error.code, "- log in again");
          process.exit(1);
        }
        if (!r.ok) throw new Error(`refresh failed: ${r.status}`);
        tokens = await r.json();
        console.log(`tokens refreshed; access token valid ${tokens.expires_in} s`);
        scheduleRefresh();
      } catch (e) {
        console.error(e.message, "- retrying in 5 s");
        timer = setTimeout(scheduleRefresh, 5000);
      }
    }, tokens.expires_in * 800);
  };
  scheduleRefresh();

  // auth as a function: every (re)connect presents the newest access token
  const socket = io(url, { auth: (cb) => cb({ token: tokens.access_token }), transports: ["websocket"] });
  // err.message "unauthorized"; err.data.code "token_expired" (refresh, then the
  // reconnect presents the new token), "invalid_token" or "missing_token" (log in again)
  socket.on("connect_error", (err) => {
    console.error("connect_error", err.message, err.data && err.data.code);
  });
  // fills and alerts are events (a fill, a stop that fired, a margin call): what an app
  // most needs to show; the four account types are states
  const TYPES = ["balance", "positions", "pnl", "orders", "fills", "alerts"];
  socket.on("connect", async () => {
    const ack = await socket.emitWithAck("subscribe", { types: TYPES });
    console.log("subscribe ack", ack);
  });
  for (const type of TYPES) {
    // envelope: {type, user_id, key_id, exchange, testnet, seq, as_of, sent_at, source, stale, data}
    socket.on(type, (env) => {
      console.log(`${type} seq=${env.seq} source=${env.source} stale=${env.stale}`,
        JSON.stringify(env.data));
    });
  }
  socket.on("stream_status", (s) => console.log("stream_status", s));

  process.on("SIGINT", async () => {
    clearTimeout(timer);
    socket.close();
    await post(`${url}/api/auth/logout`, { refresh_token: tokens.refresh_token });
    process.exit(0);
  });
}

main().catch((e) => { console.error(e.message); process.exit(1); });
