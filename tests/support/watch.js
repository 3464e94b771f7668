// Keeps a page open in headless Chromium and reports when a text appears
// in it, without ever reloading it itself (the page must do that).
//
//   NODE_PATH=<bench>/node_modules node watch.js CHROMIUM URL SCREENSHOT_DIR
//
// Protocol, one line each:
//   -> OPENED
//   <- wait MS TEXT        (TEXT may contain spaces)
//   -> SEEN <ms it took>   or   TIMEOUT <the page's text, JSON>
//   <- quit
// Each SEEN also saves SCREENSHOT_DIR/seen-<n>.png.
"use strict";
const path = require("path");
const readline = require("readline");
const { chromium } = require("playwright-core");

async function bodyText(page) {
  try {
    return await page.evaluate(() => (document.body ? document.body.innerText : ""));
  } catch (e) {
    return ""; // between two documents while the page reloads
  }
}

async function main() {
  const [executablePath, url, shots] = process.argv.slice(2);
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
    const page = await browser.newPage({ viewport: { width: 700, height: 900 } });
    await page.goto(url);
    console.log("OPENED");
    const lines = readline.createInterface({ input: process.stdin });
    let n = 0;
    for await (const line of lines) {
      if (line === "quit") break;
      const m = /^wait (\d+) (.*)$/.exec(line);
      if (!m) throw new Error("unknown command " + line);
      const limit = Number(m[1]);
      const text = m[2];
      const start = Date.now();
      let seen = false;
      while (Date.now() - start < limit) {
        if ((await bodyText(page)).includes(text)) {
          seen = true;
          break;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      if (seen) {
        n += 1;
        await page.screenshot({ path: path.join(shots, `seen-${n}.png`) });
        console.log("SEEN " + (Date.now() - start));
      } else {
        console.log("TIMEOUT " + JSON.stringify(await bodyText(page)));
      }
    }
  } finally {
    await browser.close();
  }
}

// Exits explicitly: the open stdin would keep node alive after "quit".
main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
