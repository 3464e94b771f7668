// Opens an unsubscribe page in headless Chromium, waits to be told to go
// on, clicks its button and reports what the reader then sees.
//
//   NODE_PATH=<bench>/node_modules node click.js CHROMIUM URL SCREENSHOT_DIR
//
// Protocol on stdout/stdin, one line each, so the test can look at the
// store between opening the page and clicking:
//   -> OPENED {"heading": "...", "button": "..."}
//   <- click
//   -> CLICKED {"heading": "...", "text": "...", "url": "...", "status": N}
// Screenshots: SCREENSHOT_DIR/before.png and after.png (narrow phone width).
"use strict";
const path = require("path");
const readline = require("readline");
const { chromium } = require("playwright-core");

async function main() {
  const [executablePath, url, shots] = process.argv.slice(2);
  if (!executablePath || !url || !shots) {
    throw new Error("usage: click.js CHROMIUM URL SCREENSHOT_DIR");
  }
  // The flags that work on a machine without a network (see the env
  // doc); Playwright itself starts Chromium with a new empty profile.
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 390, height: 700 } });
    const opened = await page.goto(url);
    const heading = (await page.textContent("h1")).trim();
    const button = (await page.textContent("button")).trim();
    await page.screenshot({ path: path.join(shots, "before.png"), fullPage: true });
    process.stdout.write(`OPENED ${JSON.stringify({ heading, button, status: opened.status() })}\n`);

    const rl = readline.createInterface({ input: process.stdin });
    const line = await new Promise((resolve) => rl.once("line", resolve));
    rl.close();
    if (line.trim() !== "click") throw new Error(`expected "click", got ${JSON.stringify(line)}`);

    const [response] = await Promise.all([
      page.waitForNavigation(),
      page.getByRole("button", { name: button }).click(),
    ]);
    const after = {
      heading: (await page.textContent("h1")).trim(),
      text: (await page.textContent("main")).replace(/\s+/g, " ").trim(),
      url: page.url(),
      status: response ? response.status() : 0,
    };
    await page.screenshot({ path: path.join(shots, "after.png"), fullPage: true });
    process.stdout.write(`CLICKED ${JSON.stringify(after)}\n`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(`click.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
