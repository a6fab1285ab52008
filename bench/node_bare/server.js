// The Node socket.io baseline of bench.fanout: the same job as bench/bare_server.py
// (read its docstring), on socket.io 4.8.x, as the ceiling the Python stack is measured
// against.
//
//   node server.js --port P
//
// Accepts any connection (no auth check), acks `subscribe` with {ok: true}; on
// POST /rounds {"rate", "rounds", "k0", "pad"} runs `rounds` rounds, round j scheduled
// at start + j / rate: one `pnl` event to every connected client in connect order,
// each a fresh object of about 500 bytes of JSON shaped like the product's `pnl`
// envelope, carrying `round` (k0 + j), `t0` (the round's scheduled start, ms; a late
// round keeps its scheduled time) and `sent_at` (ms, at the emit). GET /stats answers
// {connections, rounds, late_rounds, max_round_s}. JSON is socket.io's own
// (JSON.stringify). Install once: `npm ci` (or `npm install`) in this folder.
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const args = process.argv.slice(2);
const portAt = args.indexOf("--port");
const port = portAt >= 0 ? Number(args[portAt + 1]) : 0;
const host = "127.0.0.1";

const sockets = new Map(); // insertion order = connect order
let nextIndex = 0;
const done = { rounds: 0, late_rounds: 0, max_round_s: 0 };

function message(i, k, t0Ms, pad) {
  const upnl = ((k % 1000) * 0.01).toFixed(8);
  return {
    type: "pnl", user_id: i, key_id: i, exchange: "binance", testnet: false,
    seq: k, as_of: t0Ms, sent_at: Date.now(), source: "stream", stale: false,
    round: k, t0: t0Ms,
    data: {
      unrealized_pnl: upnl, realized_pnl: "0.00000000",
      positions: [{ symbol: "XRPUSDT", side: "LONG", unrealized_pnl: upnl, roe_pct: "1.23" }],
    },
    pad,
  };
}

function runRounds(rate, rounds, k0, pad) {
  const start = Date.now() / 1000 + 0.05;
  let j = 0;
  const step = () => {
    if (j >= rounds) return;
    const scheduled = start + j / rate;
    const wait = scheduled - Date.now() / 1000;
    if (wait > 0) {
      setTimeout(step, wait * 1000);
      return;
    }
    if (wait < -0.001) done.late_rounds += 1;
    const tBegin = Date.now() / 1000;
    const t0Ms = Math.floor(scheduled * 1000);
    for (const [socket, i] of sockets) {
      socket.emit("pnl", message(i, k0 + j, t0Ms, pad));
    }
    done.rounds += 1;
    done.max_round_s = Math.max(done.max_round_s, Date.now() / 1000 - tBegin);
    j += 1;
    setImmediate(step); // let the writes and other events run between rounds
  };
  step();
}

function json(res, code, body) {
  res.writeHead(code, { "Content-Type": "application/json" });
  res.end(JSON.stringify(body));
}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && req.url === "/stats") {
    json(res, 200, { connections: sockets.size, ...done });
  } else if (req.method === "POST" && req.url === "/rounds") {
    let body = "";
    req.on("data", (c) => { body += c; });
    req.on("end", () => {
      const b = JSON.parse(body);
      runRounds(Number(b.rate), Number(b.rounds), Number(b.k0), "x".repeat(Number(b.pad ?? 120)));
      json(res, 200, { ok: true });
    });
  } else if (!req.url.startsWith("/socket.io/")) {
    json(res, 404, { error: "not found" });
  }
});

const io = new Server(server, { cors: { origin: "*" } });
io.on("connection", (socket) => {
  sockets.set(socket, nextIndex++);
  socket.on("subscribe", (data, ack) => {
    const types = data && Array.isArray(data.types) ? data.types : [];
    if (typeof ack === "function") ack({ ok: true, subscribed: types });
  });
  socket.on("disconnect", () => { sockets.delete(socket); });
});

server.listen(port, host, () => {
  console.log(`node bare server listening port=${server.address().port}`);
});
process.on("SIGTERM", () => process.exit(0));
