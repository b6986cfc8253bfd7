// MQTT.js (the browser-side MQTT client, here under node) as an independent WebSocket
// peer for tests/edge_ws.rs. One JSON argument:
//   { url, username, password, ca (PEM path, for wss), protocolVersion (4 or 5),
//     subscribe: [filter], publish: [{topic, payload}] (QoS 1, after the SUBACK),
//     until: topic (exit 0 after a message on it) }
// Prints one JSON line per event: connect, suback, puback, message, error, close.
// Exits 1 on an error or a close before `until`.
"use strict";
const fs = require("fs");
const path = require("path");
const modules = process.env.TOLLGATE_NODE_MQTT || path.join(__dirname, "../../target/node-mqtt");
const mqtt = require(path.join(path.resolve(modules), "node_modules", "mqtt"));

const spec = JSON.parse(process.argv[2]);
const say = (event, fields) => console.log(JSON.stringify(Object.assign({ event }, fields || {})));

const options = {
  protocolVersion: spec.protocolVersion || 4,
  clientId: spec.clientId || "mqttjs-" + process.pid,
  reconnectPeriod: 0,
  connectTimeout: 10000,
};
if (spec.username) options.username = spec.username;
if (spec.password) options.password = spec.password;
if (spec.ca) options.ca = fs.readFileSync(spec.ca);

const client = mqtt.connect(spec.url, options);
let finished = false;
const finish = (code) => {
  finished = true;
  client.end(true, () => process.exit(code));
  setTimeout(() => process.exit(code), 1000);
};

client.on("connect", () => {
  say("connect");
  client.subscribe(spec.subscribe || [], { qos: 1 }, (err, granted) => {
    if (err) {
      say("error", { message: String(err) });
      return finish(1);
    }
    say("suback", { granted: (granted || []).map((g) => g.qos) });
    for (const p of spec.publish || []) {
      client.publish(p.topic, p.payload, { qos: 1 }, (e, packet) => {
        say("puback", { topic: p.topic, error: e ? String(e) : null, reasonCode: packet && packet.reasonCode });
      });
    }
  });
});
client.on("message", (topic, payload) => {
  say("message", { topic, payload: payload.toString() });
  if (topic === spec.until) finish(0);
});
client.on("error", (e) => {
  say("error", { message: String(e && e.message ? e.message : e) });
  finish(1);
});
client.on("close", () => {
  if (!finished) {
    say("close");
    finish(1);
  }
});
