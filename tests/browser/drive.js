// Drives the web chat page in Debian's Chromium for tests/test_web_page.py.
//
//   node drive.js BASE_URL SCREENSHOT_PATH TIMEOUT_SECONDS
//
// It reports each step as a JSON line {"event": ...} on stdout and, where the test must act
// first (an IRC user replies, the daemon stops), waits for a line {"go": "<step>"} on stdin.
// It exits by itself: 0 when every step passed, 1 on a failed step, 2 when time runs out.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const readline = require("readline");
const { chromium } = require("playwright-core");

const [baseURL, screenshotPath, timeoutText] = process.argv.slice(2);
const STEP_MS = 10000;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

const report = (event, details = {}) => process.stdout.write(JSON.stringify({ event, ...details }) + "\n");

const overall = setTimeout(() => {
  report("timeout");
  process.exit(2);
}, Number(timeoutText) * 1000);

const orders = [];
let wanted = null;
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  orders.push(JSON.parse(line).go);
  if (wanted) wanted();
});

async function go(step) {
  report("waiting", { step });
  while (!orders.includes(step)) await new Promise((resolve) => { wanted = resolve; });
  orders.splice(orders.indexOf(step), 1);
}

async function main() {
  // A fresh profile in a temporary directory, removed at the end.
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "chatserv-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1000, height: 640 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
           "--no-first-run", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    const problems = [];
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    page.on("console", (msg) => {
      // The API answers a refusal (a wrong password) with 400, which the page shows; failed
      // requests are expected, and shown on the page, once the daemon is gone.
      const expected = /status of 400/.test(msg.text()) ||
        (outage && /Failed to load resource|ERR_CONNECTION_REFUSED/.test(msg.text()));
      if (msg.type() === "error" && !expected) {
        problems.push(`console: ${msg.text()}`);
      }
    });
    await steps(page);
    report("done", { problems });
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

let outage = false;
const notice = (page) => page.locator("#notice");

async function logIn(page, username, password, button = "#login") {
  await page.fill("#username", username);
  await page.fill("#password", password);
  await page.click(button);
}

async function steps(page) {
  await page.goto(`${baseURL}/chat`);
  report("opened", { title: await page.title() });

  await logIn(page, "alice", "secret", "#register");
  await page.locator("#me", { hasText: "alice" }).waitFor();
  report("registered");

  await page.click("#logout");
  await logIn(page, "alice", "not her password");
  const error = page.locator("#auth-error");
  await error.filter({ hasText: /\S/ }).waitFor();
  report("wrong_password", { error: await error.textContent(), chatHidden: await page.isHidden("#chat-view") });

  await logIn(page, "alice", "secret");
  await page.locator("#me", { hasText: "alice" }).waitFor();
  await page.locator("#notice").waitFor({ state: "hidden" });
  report("logged_in");

  await page.fill("#contact-name", "nobody");
  await page.click("#add-contact button");
  await notice(page).filter({ hasText: /\S/ }).waitFor();
  report("unknown_contact", { notice: await notice(page).textContent() });

  await page.fill("#contact-name", "bob");
  await page.click("#add-contact button");
  const bob = page.locator('[data-user="bob"]');
  await bob.and(page.locator(".online")).waitFor();
  report("contact_online");

  await bob.click();
  const hostile = "<script>window.pwned = 1</script><b>bold?</b> & <img src=x onerror=\"window.pwned=2\">";
  await page.fill("#message", hostile);
  await page.click("#send");
  await page.locator(".message.mine .body", { hasText: "<b>bold?</b>" }).waitFor();
  report("sent", { content: hostile });

  await go("replied");
  const reply = page.locator(".message:not(.mine) .body").last();
  await reply.waitFor();
  report("reply_seen", {
    reply: await reply.textContent(),
    bodies: await page.locator("#messages .body").allTextContents(),
    elementsInMessages: await page.locator("#messages .body *").count(),
    pwned: await page.evaluate(() => window.pwned === undefined ? null : window.pwned),
  });

  await page.fill("#room-name", "#lobby");
  await page.click("#join-room button");
  await page.locator("#conversation-title", { hasText: "#lobby" }).waitFor();
  report("joined_room");
  await go("room_message");
  await page.locator(".message .body", { hasText: "welcome to the lobby" }).waitFor();
  await page.fill("#message", "thanks, room");
  await page.click("#send");
  await page.locator(".message.mine .body", { hasText: "thanks, room" }).waitFor();
  await bob.click();
  await page.locator(".message .body").last().waitFor();
  await page.screenshot({ path: screenshotPath });
  report("screenshot", { path: screenshotPath });

  await go("bob_left");
  await bob.and(page.locator(".offline")).waitFor();
  report("contact_offline");

  await go("daemon_stopped");
  outage = true;
  await notice(page).filter({ hasText: /reconnecting/i }).waitFor();
  report("reconnecting", {
    notice: await notice(page).textContent(),
    composerDisabled: await page.isDisabled("#message"),
    bodies: await page.locator("#messages .body").allTextContents(),
  });

  await go("daemon_restarted");
  const ended = page.locator("#auth-error", { hasText: "session has ended" });
  await ended.waitFor();
  report("session_ended", { error: await ended.textContent() });
  await logIn(page, "alice", "secret");
  await page.locator("#me", { hasText: "alice" }).waitFor();
  await bob.click();
  await page.locator("#messages .body").nth(1).waitFor();
  report("history", { bodies: await page.locator("#messages .body").allTextContents() });
}

main().then(() => {
  clearTimeout(overall);
  process.exit(0);
}, (err) => {
  report("failed", { error: String(err && err.stack || err) });
  process.exit(1);
});
