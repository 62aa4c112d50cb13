// Drives the system's headless Chromium over the web demo (tests and benchmarks); prints JSON.
//
//   node export/browser.mjs camera --url http://127.0.0.1:PORT/ --video photo.y4m [--screenshot s.png]
//   node export/browser.mjs upload --url http://127.0.0.1:PORT/?camera=... --file photo.jpg [--screenshot s.png]
//   node export/browser.mjs page   --url http://127.0.0.1:PORT/ [--deny-camera] [--screenshot s.png]
//                                  (the page after start-up; --deny-camera: the user refuses the camera)
//   node export/browser.mjs bench  --url 'http://127.0.0.1:PORT/?camera=off&backend=wasm' [--frames 20]
//   node export/browser.mjs steps  --url http://127.0.0.1:PORT/ --steps steps.json [--video photos.y4m]
//                                  (a scripted visit: clicks, typing, files, reloads; see runStep)
//
// Any mode also takes:
//   --cores N            the page sees navigator.hardwareConcurrency = N (DevTools protocol
//                        Emulation.setHardwareConcurrencyOverride), to test TF.js's wasm thread rule
//   --spki B64           trust the https server whose certificate has this public-key hash
//                        (base64 SHA-256 of its SPKI), as a device that installed the local CA would
//   --ignore-https-errors  an untrusted certificate the user clicked through (the page loads; no
//                        service worker may register)
//   --profile DIR        keep the browser profile in DIR (service worker + its cache survive between runs)
//   --wait-offline       wait until the page has decided whether it works offline (its service worker)
//   --viewport WxH       the screen size (default 412x915, a phone)
//   --init-script FILE   JavaScript run in every page before its own scripts (e.g. to break IndexedDB)
//
// camera: Chromium's fake camera plays the .y4m file; waits for a prediction on a camera frame.
// upload: no camera at all (as on a desktop without one); chooses the file in the page's file input.
// Output: window.demo.snapshot() (what the page shows + the pixels it fed the model) or the
// benchmark figures, plus the page's console errors.
import { parseArgs } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const { positionals, values: args } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: 'string' },
    video: { type: 'string' },
    file: { type: 'string' },
    screenshot: { type: 'string' },
    frames: { type: 'string', default: '20' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
    timeout: { type: 'string', default: '120000' },
    'min-frame': { type: 'string', default: '3' },
    'deny-camera': { type: 'boolean', default: false },
    cores: { type: 'string' },
    spki: { type: 'string' },
    'ignore-https-errors': { type: 'boolean', default: false },
    profile: { type: 'string' },
    'wait-offline': { type: 'boolean', default: false },
    viewport: { type: 'string', default: '412x915' },
    steps: { type: 'string' },
    'init-script': { type: 'string' },
  },
});
const mode = positionals[0];
if (!['camera', 'upload', 'page', 'bench', 'steps'].includes(mode) || !args.url) {
  console.error('usage: node export/browser.mjs camera|upload|page|bench|steps --url URL [...] (see the header)');
  process.exit(2);
}
const timeout = Number(args.timeout);

// Flags for a closed-network machine (no background connections, updates or sync) and a
// headless run; the fake-camera flags only in camera mode.
const flags = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
if (args.spki) flags.push(`--ignore-certificate-errors-spki-list=${args.spki}`);
if (args['deny-camera']) {
  // A camera exists, and the (fake) permission prompt answers "Block".
  flags.push('--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream=deny');
} else if (mode === 'camera' || (mode === 'steps' && args.video)) {
  if (!args.video) throw new Error('camera mode needs --video file.y4m');
  flags.push(
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
    `--use-file-for-fake-video-capture=${path.resolve(args.video)}`,
  );
}

const pageReady = (page) =>
  page.waitForFunction(() => window.demo && window.demo.state.status !== 'loading', null, { timeout });

// One step of a scripted visit ({"click": selector}, ...); returns what it reports, or undefined.
// Confirm dialogs (e.g. "Delete ...?") are accepted.
async function runStep(page, step) {
  if (step.goto) await page.goto(step.goto, { timeout });
  if (step.reload) await page.reload({ timeout });
  if (step.goto || step.reload) return void (await pageReady(page));
  if (step.fill) return void (await page.fill(step.fill, step.value, { timeout }));
  if (step.click) return void (await page.click(step.click, { timeout }));
  if (step.press) return void (await page.press(step.press, step.key, { timeout }));
  if (step.files) return void (await page.setInputFiles(step.files, step.paths.map((p) => path.resolve(p)), { timeout }));
  if (step.wait) return void (await page.waitForFunction(step.wait, null, { timeout, polling: 50 }));
  if (step.sleep) return void (await page.waitForTimeout(step.sleep));
  if (step.screenshot) return void (await page.screenshot({ path: step.screenshot, fullPage: step.fullPage !== false }));
  if (step.eval) return page.evaluate(step.eval);
  if (step.snapshot) return page.evaluate(() => window.demo.snapshot());
  throw new Error(`unknown step ${JSON.stringify(step)}`);
}

async function main() {
  // A fresh, empty profile for every run, unless --profile names one to keep.
  const profile = args.profile || fs.mkdtempSync(path.join(os.tmpdir(), 'flowers-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    args: flags,
    ignoreHTTPSErrors: args['ignore-https-errors'],
    viewport: { width: Number(args.viewport.split('x')[0]), height: Number(args.viewport.split('x')[1]) },
    deviceScaleFactor: 1,
  });
  const console_ = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') console_.push(`${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => console_.push(`pageerror: ${e.message}`));
    page.on('dialog', (d) => d.accept());
    if (args['init-script']) await context.addInitScript({ path: path.resolve(args['init-script']) });
    if (args.cores) {
      const cdp = await context.newCDPSession(page);
      await cdp.send('Emulation.setHardwareConcurrencyOverride', { hardwareConcurrency: Number(args.cores) });
    }
    await page.goto(args.url, { timeout });
    await pageReady(page);
    if (args['wait-offline']) await page.evaluate(() => window.demo.state.offlineDone);
    let result;
    if (mode === 'camera') {
      const minFrame = Number(args['min-frame']);
      await page.waitForFunction(
        (n) => window.demo.state.status === 'error' || (window.demo.state.last && window.demo.state.last.source === 'camera' && window.demo.state.frame >= n),
        minFrame,
        { timeout },
      );
      result = await page.evaluate(() => window.demo.snapshot());
    } else if (mode === 'upload') {
      if (!args.file) throw new Error('upload mode needs --file photo.jpg');
      const before = await page.evaluate(() => window.demo.snapshot());
      if (before.status === 'ready') {
        await page.setInputFiles('#file', path.resolve(args.file));
        await page.waitForFunction(() => window.demo.state.last && window.demo.state.last.source === 'photo', null, { timeout });
      }
      result = await page.evaluate(() => window.demo.snapshot());
      result.messageBefore = before.message;
    } else if (mode === 'steps') {
      // {"results": [[label, what the step reported], ...]} for the steps that report (snapshot, eval).
      const steps = JSON.parse(fs.readFileSync(args.steps, 'utf8'));
      result = { results: [] };
      for (const [i, step] of steps.entries()) {
        let out;
        try {
          out = await runStep(page, step);
        } catch (e) {
          const shown = await page.evaluate(() => {
            const { message, addMessage, addNote, addedList, shownTop5, errors } = window.demo.snapshot();
            return { message, addMessage, addNote, addedList, shownTop5, errors };
          }).catch(() => null);
          throw new Error(`step ${i} ${JSON.stringify(step)}: ${e.message}\npage: ${JSON.stringify(shown)}\n${console_.join('\n')}`);
        }
        if (out !== undefined) result.results.push([step.label ?? String(i), out]);
      }
    } else if (mode === 'bench') {
      // The service worker's first install downloads every file again: not during the timed frames.
      await page.evaluate(() => window.demo.state.offlineDone);
      result = await page.evaluate((n) => window.demo.benchmark(n), Number(args.frames));
    } else {
      result = await page.evaluate(() => window.demo.snapshot());
    }
    if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
    result.console = console_;
    result.chromium = context.browser() ? context.browser().version() : null;
    console.log(JSON.stringify(result));
  } finally {
    await context.close();
    if (!args.profile) fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
