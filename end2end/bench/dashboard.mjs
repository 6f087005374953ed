// Dashboard benchmark (on demand, not a test): a 1 000-node DAG sending about 500 events/s for
// about 10 s to a run view in headless Chromium. Reports the longest main-thread task (long
// tasks API), how many tasks took over 50 ms, and the time from first byte to interactive
// (hydrated and live). Run with `make bench-dashboard` (it builds the release site first);
// `RUNS=10 make bench-dashboard` repeats it (a fresh server and browser each time) and sums up,
// since one run on a busy 2-core machine says little. Each run is measured on the graph view and
// on the Gantt view (`?view=gantt`); `VIEWS=gantt` picks one.
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright';

const root = resolve(import.meta.dirname, '../..');
const binary = process.env.DAGSTREAM_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(root, 'target'), 'release/dagstream');
const port = 3099;
const base = `http://127.0.0.1:${port}`;
const token = process.env.DAGSTREAM_TOKEN ?? 'bench-admin-token-not-a-secret';
const auth = { authorization: `Bearer ${token}` };
const layers = 10;
const perLayer = 100;

function spec() {
  const lines = ['name = "dashboard-bench"', `max_parallel = ${perLayer}`];
  for (let layer = 0; layer < layers; layer++) {
    for (let i = 0; i < perLayer; i++) {
      lines.push('[[nodes]]', `id = "n${layer}_${i}"`, 'kind = "simulate"', 'duration = "1s"', 'cost = 0.001');
      if (layer > 0) lines.push(`needs = ["n${layer - 1}_${(i * 37) % perLayer}"]`);
    }
  }
  return lines.join('\n') + '\n';
}

/** One run: a fresh server, browser and 1 000-node run; what the page measured. */
async function once(view) {
  const data = mkdtempSync(join(tmpdir(), 'dagstream-bench-'));
  const server = spawn(binary, ['serve', '--addr', `127.0.0.1:${port}`, '--data', data, '--site-root', join(root, 'target/site')], {
    stdio: 'ignore',
    env: { ...process.env, DAGSTREAM_TOKEN: token },
  });
  try {
    for (let i = 0; ; i++) {
      try { if ((await fetch(`${base}/healthz`)).ok) break; } catch {}
      if (i > 100) throw new Error('the server did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
    // The page reports going live and the run completing as console messages, so the harness
    // injects no script of its own into the page while it is measured: Playwright's polling
    // (`waitForFunction`, `evaluate`) parses a script of about 500 functions in the page's main
    // thread first, a 30-50 ms task the long tasks API would count as the app's.
    await page.addInitScript(() => {
      window.__longTasks = [];
      new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longTasks.push([Math.round(e.startTime), Math.round(e.duration)]); }).observe({ type: 'longtask', buffered: true });
      window.__liveAt = null;
      let completed = false;
      new MutationObserver(() => {
        const el = document.querySelector('[data-testid=connection]');
        if (!window.__liveAt && el && el.getAttribute('data-state') === 'live') {
          window.__liveAt = performance.now();
          console.log('bench:live');
        }
        if (!completed && document.querySelector('[data-testid=run-state]')?.textContent === 'completed') {
          completed = true;
          console.log('bench:completed');
        }
      }).observe(document, { subtree: true, attributes: true, childList: true, characterData: true });
    });
    const milestone = (text, timeout) => page.waitForEvent('console', { predicate: (message) => message.text() === text, timeout });
    const started = await fetch(`${base}/api/dags`, { method: 'POST', headers: { 'content-type': 'application/toml', ...auth }, body: spec() });
    const { dag_id: dagId } = await started.json();
    await page.goto(`${base}/login?token=${token}`);
    const live = milestone('bench:live', 60_000);
    const completed = milestone('bench:completed', 120_000);
    await page.goto(`${base}/dags/${dagId}${view === 'gantt' ? '?view=gantt' : ''}`);
    await live;
    const seqAtLive = (await (await fetch(`${base}/api/dags/${dagId}`, { headers: auth })).json()).seq;
    const t0 = Date.now();
    await completed;
    const seconds = (Date.now() - t0) / 1000;
    const final = await (await fetch(`${base}/api/dags/${dagId}`, { headers: auth })).json();
    // Read once the run is over; the harness's script runs only now.
    const result = await page.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      return { firstByteToInteractiveMs: window.__liveAt - nav.responseStart, longTasks: window.__longTasks, liveAt: window.__liveAt };
    });
    await browser.close();
    return { events: final.seq - seqAtLive, seconds, ...result };
  } finally {
    server.kill('SIGKILL');
  }
}

/** Time after going live that still counts as the page starting: its snapshot is read and applied
 * and the graph drawn in this window; after it the page only streams. */
const START_UP_AFTER_LIVE_MS = 1000;

/** A run's long tasks, split into those while the page starts and those while it streams. */
function phases(r) {
  const startUp = r.longTasks.filter(([start]) => start < r.liveAt + START_UP_AFTER_LIVE_MS);
  return { startUp, streaming: r.longTasks.filter((task) => !startUp.includes(task)) };
}

/** The longest of these long tasks; the long tasks API reports only tasks over 50 ms. */
function longestText(longTasks) {
  return longTasks.length ? `${Math.max(...longTasks.map(([, ms]) => ms))} ms` : 'none over 50 ms';
}

const runs = Math.max(1, Number(process.env.RUNS ?? 1));
const views = (process.env.VIEWS ?? 'graph,gantt').split(',');
for (const view of views) {
  const results = [];
  for (let i = 0; i < runs; i++) {
    const r = await once(view);
    results.push(r);
    const longest = longestText(r.longTasks);
    console.log(`[${view}] nodes: ${layers * perLayer}, events streamed to the page: ${r.events} in ${r.seconds.toFixed(1)} s (${(r.events / r.seconds).toFixed(0)} events/s)`);
    console.log(`[${view}] first byte to interactive (hydrated, stream live): ${r.firstByteToInteractiveMs.toFixed(0)} ms`);
    const { startUp, streaming } = phases(r);
    console.log(`[${view}] long tasks (> 50 ms): ${r.longTasks.length} (${startUp.length} while the page starts, ${streaming.length} while it streams); longest main-thread task: ${longest}`);
    if (process.env.VERBOSE) console.log(`live at ${r.liveAt.toFixed(0)} ms; long tasks [start ms, duration ms]: ${JSON.stringify(r.longTasks)}`);
  }
  if (runs > 1) {
    const clean = results.filter((r) => r.longTasks.length === 0).length;
    const longest = longestText(results.flatMap((r) => r.longTasks));
    const fbi = results.map((r) => r.firstByteToInteractiveMs);
    const cleanStreaming = results.filter((r) => phases(r).streaming.length === 0).length;
    console.log(`[${view}] ${runs} runs: ${clean} without a task over 50 ms (${cleanStreaming} without one while streaming); longest task of all: ${longest}; first byte to interactive ${Math.min(...fbi).toFixed(0)}–${Math.max(...fbi).toFixed(0)} ms`);
  }
}
