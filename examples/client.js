// A small Socket.IO client for mobile/web developers (socket.io-client v4).
//   npm install socket.io-client@4
//   node examples/client.js http://127.0.0.1:5000 demo <password>
const { io } = require("socket.io-client");

async function main() {
  const [url = "http://127.0.0.1:5000", username = "demo", password] = process.argv.slice(2);
  if (!password) throw new Error("usage: node client.js URL USERNAME PASSWORD");
  const res = await fetch(`${url}/api/auth/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  if (!res.ok) throw new Error(`login failed: ${res.status} ${await res.text()}`);
  const { access_token } = await res.json();

  const socket = io(url, { auth: { token: access_token }, transports: ["websocket"] });
  socket.on("connect_error", (err) => console.error("connect_error", err.message)); // "unauthorized"
  socket.on("connect", async () => {
    const ack = await socket.emitWithAck("subscribe", {
      types: ["balance", "positions", "pnl", "orders"],
    });
    console.log("subscribe ack", ack);
  });
  for (const type of ["balance", "positions", "pnl", "orders"]) {
    // envelope: {type, user_id, key_id, exchange, testnet, seq, as_of, sent_at, source, stale, data}
    socket.on(type, (env) => {
      console.log(`${type} seq=${env.seq} source=${env.source} stale=${env.stale}`,
        JSON.stringify(env.data));
    });
  }
  socket.on("stream_status", (s) => console.log("stream_status", s));
}

main().catch((e) => { console.error(e.message); process.exit(1); });
