// The agent console in Debian's Chromium, driven by playwright-core (tests/console.rs runs
// this). Logs in, waits for a live escalation, opens it, resends the confirmation SMS and
// closes it; prints one JSON line per step and saves screenshots.
"use strict";
const { chromium } = require("playwright-core");
const [base, user, pass, shots] = process.argv.slice(2);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(base + "/console");
    await page.fill("#username", user);
    await page.fill("#password", pass);
    await page.click("#login button");
    await page.waitForSelector("#app:not([hidden])");
    await page.screenshot({ path: shots + "/1-console.png" });
    say({ ready: true });
    const row = await page.waitForSelector("tr[data-testid=escalation]", { timeout: 90000 });
    const at = Date.now();
    // The call is still on the line (hearing that no agent is free): the staff figures count it.
    const overview = await page.evaluate(async () => (await fetch("/staff/api/overview")).json());
    const live = overview.calls.by_service;
    const nodeCount = overview.nodes.length;
    say({ seen: await row.getAttribute("data-id"), at, live, nodes: nodeCount });
    await page.screenshot({ path: shots + "/2-escalation-arrived.png" });
    await row.click();
    await page.waitForSelector("[data-testid=detail-id]");
    say({ caller: await page.textContent("[data-testid=caller]") });
    await page.click("button[data-act=resend_sms]");
    await page.waitForFunction(() => /sent again/.test(document.querySelector("[data-testid=act-result]")?.textContent || ""));
    say({ resent: await page.textContent("[data-testid=act-result]") });
    await page.fill("#note", "called back, top-up confirmed");
    await page.click("button[data-act=note]");
    await page.waitForFunction(() => /called back/.test(document.querySelector("[data-testid=actions]")?.textContent || ""));
    await page.click("button[data-act=close]");
    await page.waitForFunction(() => document.querySelector("[data-testid=state]")?.textContent === "closed");
    await page.screenshot({ path: shots + "/3-closed.png" });
    // The staff pages, same login: the wallet plan drawn with where the caller went.
    await page.goto(base + "/staff");
    await page.waitForSelector("#graph svg");
    await page.selectOption("#plan", "wallet");
    await page.waitForFunction(() => /1 reached/.test(document.querySelector("#graph svg")?.textContent || ""));
    const nodes = await page.$$eval("#graph svg rect", (r) => r.length);
    const reached = await page.$$eval("#graph svg text.stats", (t) => t.filter((x) => x.textContent.startsWith("1 reached")).length);
    await page.screenshot({ path: shots + "/4-staff-dialplan.png", fullPage: true });
    const prompts = await page.textContent("#prompts");
    const cdrs = await page.textContent("#cdrs");
    say({ staff: true, nodes, reached, prompts, cdrs });
    say({ done: true });
  } catch (e) {
    say({ error: String(e && e.message || e) });
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
