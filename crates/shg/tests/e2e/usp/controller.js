// A USP controller that no one here wrote (usp-js, from npm) driving an SHG gateway through
// mosquitto, step by step. Each step prints one JSON line; tests/e2e/usp.rs checks them.
// Environment: BROKER_PORT, AGENT_ID, AGENT_TOPIC, CONTROLLER_ID, CONTROLLER_TOPIC,
// PACKAGE_URL and UPDATE_URL (file:///… of signed packages, versions 1.0.0 and 2.0.0),
// UNSIGNED_URL and TOO_BIG_URL (one unsigned, one reserving more memory than there is).
const connect = require("usp-js").default;

const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};
const say = (step, data) => console.log(JSON.stringify({ step, ...data }));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const failure = (e) => (e && (e.errMsg || e.err_msg || e.message)) || JSON.stringify(e);

async function until(what, check, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

async function main() {
  const usp = await connect({
    host: "127.0.0.1",
    port: Number(env("BROKER_PORT")),
    protocol: "mqtt",
    fromId: env("CONTROLLER_ID"),
    toId: env("AGENT_ID"),
    publishEndpoint: env("AGENT_TOPIC"),
    subscribeEndpoint: env("CONTROLLER_TOPIC"),
    closeOnDisconnect: true,
  });

  const ee = await usp.get("Device.SoftwareModules.ExecEnv.1.");
  say("exec-env", { ee });
  const dm = await usp.supportedDM("Device.SoftwareModules.", {
    returnCommands: true,
    returnEvents: true,
    returnParams: true,
  });
  say("supported", { dm });

  // Every status change of every execution unit, as notifications.
  const changes = [];
  const clearChanges = await usp.subscribe(
    { id: "eu-status", notif: "ValueChange", reference: "Device.SoftwareModules.ExecutionUnit.*.Status" },
    (msg, full) => changes.push(full.body.request.notify.valueChange),
  );
  const created = [];
  const clearCreated = await usp.subscribe(
    { id: "eu-created", notif: "ObjectCreation", reference: "Device.SoftwareModules.ExecutionUnit." },
    (msg, full) => created.push(full.body.request.notify.objCreation.objPath),
  );
  const events = [];
  const clearEvents = await usp.subscribe(
    { id: "du-events", notif: "Event", reference: "Device.SoftwareModules.DUStateChange!" },
    (msg, full) => events.push(full.body.request.notify.event.params),
  );

  // InstallDU() is asynchronous: usp-js subscribes to its OperationComplete and waits for it.
  const [install, clearInstall] = await usp.operate("Device.SoftwareModules.InstallDU()", { ID: "install" });
  const installed = await install({ URL: env("PACKAGE_URL") });
  await clearInstall();
  say("installed", { installed });

  const units = await usp.instances("Device.SoftwareModules.ExecutionUnit.");
  say("instances", { units });
  const eu = await until("an execution unit", async () => {
    const all = await usp.get("Device.SoftwareModules.ExecutionUnit.*.");
    const list = Array.isArray(all) ? all : [all];
    return list.find((u) => u.Status === "Active");
  });
  say("active", { eu });
  const path = `Device.SoftwareModules.ExecutionUnit.${eu.__query__ ? eu.__query__.split(".")[3] : 1}.`;

  const [setState] = await usp.operate(`${path}SetRequestedState()`, { isAsync: false });
  const stopped = await setState({ RequestedState: "Idle" });
  say("set-idle", { stopped, status: await usp.get(`${path}Status`) });
  await until("a change to Idle", () => changes.find((c) => c.paramValue === "Idle"));
  const started = await setState({ RequestedState: "Active" });
  say("set-active", { started, status: await usp.get(`${path}Status`) });
  await until("a change to Active", () => changes.find((c) => c.paramValue === "Active" && c.paramPath.startsWith(path)));
  say("changes", { changes });

  // Update() is asynchronous too; the new release must stay up for the health window.
  const du = path.replace("ExecutionUnit", "DeploymentUnit");
  const [update, clearUpdate] = await usp.operate(`${du}Update()`, { ID: "update" });
  const updated = await update({ URL: env("UPDATE_URL") });
  await clearUpdate();
  say("updated", { updated, version: await usp.get(`${du}Version`), status: await usp.get(`${path}Status`) });

  // Bad input: each refused with a USP error, nothing changed.
  const bad = {};
  bad.state = await setState({ RequestedState: "Sleeping" }).then((r) => ({ ok: r }), (e) => ({ err: failure(e) }));
  bad.path = await usp.get("Device.SoftwareModules.Colour").then((r) => ({ ok: r }), (e) => ({ err: failure(e) }));
  bad.type = await usp
    .set("Device.LocalAgent.Subscription.*.Enable", "maybe")
    .then((r) => ({ ok: r }), (e) => ({ err: failure(e) }));
  bad.set = await usp.set(`${path}RequestedState`, "Idle").then((r) => ({ ok: r }), (e) => ({ err: failure(e) }));
  const [badInstall, clearBad] = await usp.operate("Device.SoftwareModules.InstallDU()", { ID: "bad-install" });
  bad.install = await badInstall({ URL: "file:///nonexistent/package.tar" }).then((r) => ({ ok: r }), (e) => ({ err: failure(e) }));
  bad.unsigned = await badInstall({ URL: env("UNSIGNED_URL") }).then((r) => ({ ok: r }), (e) => ({ err: failure(e) }));
  bad.tooBig = await badInstall({ URL: env("TOO_BIG_URL") }).then((r) => ({ ok: r }), (e) => ({ err: failure(e) }));
  await clearBad();
  bad.after = await usp.get(`${path}Status`);
  bad.enabled = await usp.get("Device.LocalAgent.Subscription.*.Enable");
  say("bad", { bad });

  const [uninstall, clearUninstall] = await usp.operate(`${du}Uninstall()`, { ID: "uninstall" });
  const removed = await uninstall({});
  await clearUninstall();
  say("uninstalled", { removed, units: await usp.instances("Device.SoftwareModules.DeploymentUnit.") });
  await until("six DUStateChange! events", () => events.length >= 6 && events);
  say("events", { events, created });

  await clearChanges();
  await clearCreated();
  await clearEvents();
  say("subscriptions", { left: await usp.instances("Device.LocalAgent.Subscription.") });
  await usp.disconnect();
  say("done", {});
}

main().then(
  () => process.exit(0),
  (e) => {
    console.log(JSON.stringify({ step: "error", error: failure(e), stack: e && e.stack }));
    process.exit(1);
  },
);
