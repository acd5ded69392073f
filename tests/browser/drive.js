// Drives the web chat page in Debian's Chromium for tests/test_web_page.py.
//
//   node drive.js BASE_URL SCREENSHOT_DIR TIMEOUT_SECONDS
//
// One browser, two tabs of one user: the desktop one (1280 px) and a phone-sized one (375 px).
// It reports each step as a JSON line {"event": ...} on stdout and, where the test must act
// first (an IRC user writes, the daemon stops), waits for a line {"go": "<step>"} on stdin.
// It exits by itself: 0 when every step passed, 1 on a failed step, 2 when time runs out.
// Screenshots: web-chat.png (1280 px) and web-chat-phone.png (375 px) in SCREENSHOT_DIR.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const readline = require("readline");
const { chromium } = require("playwright-core");

const [baseURL, screenshotDir, timeoutText] = process.argv.slice(2);
const STEP_MS = 8000;
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

let outage = false;
const problems = [];

function watch(page) {
  page.setDefaultTimeout(STEP_MS);
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    // The API answers a refusal (a wrong password) with 400, which the page shows; failed
    // requests are expected, and shown on the page, once the daemon is gone.
    const expected = /status of 400/.test(msg.text()) ||
      (outage && /Failed to load resource|ERR_CONNECTION_REFUSED/.test(msg.text()));
    if (msg.type() === "error" && !expected) problems.push(`console: ${msg.text()}`);
  });
}

async function main() {
  // A fresh profile in a temporary directory, removed at the end.
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "chatserv-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 800 },
    locale: "en-GB",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
           "--no-first-run", "--disable-component-update", "--disable-sync"],
  });
  try {
    await context.grantPermissions(["notifications"], { origin: baseURL });
    // What the page shows as browser notifications, recorded (headless Chromium shows none).
    await context.addInitScript(() => {
      window.notified = [];
      const Shown = window.Notification;
      if (Shown) {
        window.Notification = class extends Shown {
          constructor(title, options) {
            window.notified.push(`${title}: ${options && options.body}`);
            super(title, options);
          }
        };
      }
    });
    const page = context.pages()[0] || await context.newPage();
    watch(page);
    await steps(context, page);
    report("done", { problems });
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

async function logIn(page, username, password, button = "#login") {
  await page.fill("#username", username);
  await page.fill("#password", password);
  await page.click(button);
}

const bodies = (page) => page.locator("#messages .body").allTextContents();
const sideways = (page) => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);

async function steps(context, page) {
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
  await page.locator("#chat-view").waitFor();
  await page.locator("#notice").waitFor({ state: "hidden" });  // connected
  report("logged_in");

  // An error shows next to its input, and goes with the next success there.
  const addError = page.locator("#add-contact-error");
  await page.fill("#contact-name", "nobody");
  await page.click("#add-contact button");
  await addError.filter({ hasText: /\S/ }).waitFor();
  report("unknown_contact", { error: await addError.textContent(), header: await page.isVisible("#notice") });
  await page.fill("#contact-name", "bob");
  await page.click("#add-contact button");
  const bob = page.locator('[data-user="bob"]');
  await bob.and(page.locator(".online")).waitFor();
  report("contact_online", { error: await addError.textContent() });

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
    bodies: await bodies(page),
    elementsInMessages: await page.locator("#messages .body *").count(),
    pwned: await page.evaluate(() => window.pwned === undefined ? null : window.pwned),
  });

  // IRC's /me and NOTICE, shown the way IRC clients show them.
  await go("typed");
  await page.locator(".message.notice .body").waitFor();
  report("typed", {
    action: await page.locator(".message.action .body").textContent(),
    actionShown: await page.locator(".message.action .body").evaluate((el) =>
      getComputedStyle(el, "::before").content + el.textContent),
    notice: await page.locator(".message.notice .body").textContent(),
    noticeSender: await page.locator(".message.notice .sender").textContent(),
  });

  // A multi-line composer: Shift+Enter is a new line, Enter sends.
  await page.click("#message");
  await page.keyboard.type("line one");
  await page.keyboard.press("Shift+Enter");
  await page.keyboard.type("line two");
  const typed = await page.inputValue("#message");
  await page.keyboard.press("Enter");
  await page.locator(".message.mine .body", { hasText: "line two" }).waitFor();
  await page.keyboard.type("and a third");
  await page.keyboard.press("Enter");
  const third = page.locator(".message.mine", { hasText: "and a third" });
  await third.waitFor();
  report("multiline", {
    typed,
    body: await page.locator(".message.mine .body", { hasText: "line two" }).textContent(),
    composer: await page.inputValue("#message"),
    thirdContinued: await third.evaluate((li) => li.classList.contains("continued")),
    thirdTitle: await third.getAttribute("title"),
    firstTime: await page.locator("#messages .message time").first().getAttribute("title"),
    days: await page.locator("#messages .day").allTextContents(),
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
  report("room_sent");

  // Attention, opted in: unread counts in the tab title, a browser notification.
  await page.click("#notify");
  await page.locator("#notify", { hasText: "Turn off" }).waitFor();
  report("notifications_on");
  await go("direct_while_in_room");
  await bob.locator(".badge", { hasText: "1" }).waitFor();
  report("attention", { title: await page.title(), notified: await page.evaluate(() => window.notified) });

  // The same user in a second tab, phone-sized: what one tab reads, the other no longer counts.
  const phone = await context.newPage();
  watch(phone);
  await phone.setViewportSize({ width: 375, height: 740 });
  await phone.goto(`${baseURL}/chat`);
  await logIn(phone, "alice", "secret");
  const phoneBob = phone.locator('[data-user="bob"]');
  await phoneBob.locator(".badge").waitFor();
  report("second_tab", { badge: await phoneBob.locator(".badge").textContent(), title: await phone.title() });
  await page.bringToFront();
  await bob.click();
  await phoneBob.locator(".badge").waitFor({ state: "detached" });
  await phone.waitForFunction(() => document.title === "chatserv");
  report("read_everywhere", { title: await page.title() });

  // On a phone: the list, then the conversation alone with a Back button; never sideways.
  await phone.bringToFront();
  const phoneList = { sideways: await sideways(phone), conversation: await phone.isVisible("#conversation") };
  await phoneBob.click();
  await phone.locator("#messages .body", { hasText: "and a third" }).waitFor();
  const composer = await phone.locator("#composer").boundingBox();
  report("phone", {
    list: phoneList,
    sideways: await sideways(phone),
    sidebar: await phone.isVisible("#sidebar"),
    back: await phone.isVisible("#back"),
    composerWidth: composer.width,
    width: phone.viewportSize().width,
  });
  await phone.screenshot({ path: path.join(screenshotDir, "web-chat-phone.png") });
  await phone.click("#back");
  await phone.locator("#sidebar").waitFor();
  report("phone_back", { conversation: await phone.isVisible("#conversation"), sideways: await sideways(phone) });
  await page.bringToFront();

  // Someone who is not a contact writes: listed, with presence and a count.
  await go("stranger");
  const carol = page.locator('[data-user="carol"]');
  await carol.and(page.locator(".stranger.online")).waitFor();
  report("stranger", { badge: await carol.locator(".badge").textContent(), title: await carol.getAttribute("title") });
  await go("stranger_left");
  await carol.and(page.locator(".offline")).waitFor();
  report("stranger_offline");

  // "carol added you", with Add back and Block.
  await go("request");
  await page.locator("#request-text", { hasText: "carol added you" }).waitFor();
  report("request", { add: await page.isVisible("#request-add"), block: await page.isVisible("#request-block") });
  await page.click("#request-add");
  await page.locator("#request").waitFor({ state: "hidden" });
  await page.locator('[data-user="carol"]:not(.stranger)').waitFor();
  report("added_back");

  // carol blocks alice, then lifts the block: that is no news to alice.
  await go("unblocked");
  await carol.locator(".badge", { hasText: "2" }).waitFor();
  report("unblocked", { request: await page.isVisible("#request") });

  // A gap in the connection: what came meanwhile shows once it is back, counts included.
  await page.evaluate(() => state.socket.disconnect());
  await page.locator("#notice", { hasText: /reconnecting/i }).waitFor();
  report("disconnected");
  await go("gap");
  await phoneBob.locator(".badge").waitFor();  // the other tab, still connected, has it: it is stored
  await page.evaluate(() => state.socket.connect());
  await page.locator("#messages .body", { hasText: "while you were away" }).waitFor();
  await carol.locator(".badge", { hasText: "3" }).waitFor();
  report("caught_up", { notice: await page.isVisible("#notice") });

  await go("bob_left");
  await bob.and(page.locator(".offline")).waitFor();
  report("contact_offline");

  await go("daemon_stopped");
  outage = true;
  await page.locator("#notice").filter({ hasText: /reconnecting/i }).waitFor();
  report("reconnecting", {
    notice: await page.locator("#notice").textContent(),
    composerDisabled: await page.isDisabled("#message"),
    bodies: await bodies(page),
  });

  // Back on the same port and store: still logged in, and what came while away is counted.
  await go("daemon_restarted");
  const dave = page.locator('[data-user="dave"]');
  await dave.locator(".badge").waitFor({ timeout: 20000 });
  await page.locator("#notice").waitFor({ state: "hidden" });
  outage = false;
  report("restarted", {
    badge: await dave.locator(".badge").textContent(),
    stranger: await dave.evaluate((el) => el.classList.contains("stranger")),
    title: await page.title(),
    authHidden: await page.isHidden("#auth-view"),
  });

  // Three days of history: day separators, a page at a time, the view kept while loading.
  await dave.click();
  await page.locator("#load-older").waitFor();
  const messages = page.locator("#messages .message");
  const firstPage = await messages.count();
  await page.locator("#messages").evaluate((list) => { list.scrollTop = 0; });
  const anchor = await messages.first().getAttribute("data-id");
  const anchorAt = (await messages.first().boundingBox()).y;
  await page.click("#load-older");
  await messages.nth(59).waitFor();
  const list = page.locator("#messages");
  report("history_paged", {
    firstPage,
    total: await messages.count(),
    days: await page.locator("#messages .day").allTextContents(),
    shift: (await page.locator(`#messages .message[data-id="${anchor}"]`).boundingBox()).y - anchorAt,
    more: await page.isVisible("#load-older"),
    oldest: await page.locator("#messages .body").first().textContent(),
  });

  // A message arrives while older ones are being read: the view stays, a pill offers the new one.
  const readingAt = await list.evaluate((el) => el.scrollTop);
  await go("dave_writes");
  await page.locator("#new-messages").waitFor();
  const moved = (await list.evaluate((el) => el.scrollTop)) - readingAt;
  await page.click("#new-messages");
  await page.locator("#new-messages").waitFor({ state: "hidden" });
  report("pill", {
    moved,
    atBottom: await list.evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight < 2),
    newest: await page.locator("#messages .body").last().textContent(),
  });
  await page.screenshot({ path: path.join(screenshotDir, "web-chat.png") });
  report("screenshots");
}

main().then(() => {
  clearTimeout(overall);
  process.exit(0);
}, (err) => {
  report("failed", { error: String(err && err.stack || err) });
  process.exit(1);
});
