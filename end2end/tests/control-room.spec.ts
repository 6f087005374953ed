import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { expect, test, type Page } from '@playwright/test';
import { openRun, openRunListAndStartDemo, pageStatuses, sameDocument, startDemo, startSpec } from './helpers';

const SCREENSHOTS = resolve(__dirname, '../../docs/screenshots');

test('the run list updates live: new runs appear and their state changes without a reload', async ({ page, request }) => {
  const { row } = await openRunListAndStartDemo(page, request);
  await expect(row.getByTestId('gates-waiting')).toHaveText('1 waiting', { timeout: 20_000 });
  expect(await sameDocument(page)).toBe(true);
});

test('a pasted spec is validated inline and nothing starts until it is valid', async ({ page, request }) => {
  const before = (await (await request.get('/api/dags')).json()).length;
  await page.goto('/');
  await expect(page.getByTestId('connection')).toHaveCount(0);
  // Hydrated, so the form submits through the app and keeps what is typed into it.
  await expect(page.getByTestId('start-panel')).toHaveAttribute('data-hydrated', 'true');
  await page.getByTestId('spec-text').fill('name = "pasted"\n[[nodes]]\nid = "only"\nkind = "simulate"\nneeds = ["ghost"]\n');
  await page.getByTestId('start-spec').click();
  await expect(page.getByTestId('spec-error')).toContainText('"only"');
  await expect(page.getByTestId('spec-error')).toContainText('ghost');
  expect((await (await request.get('/api/dags')).json()).length).toBe(before);

  await page.getByTestId('spec-text').fill('name = "pasted"\n[[nodes]]\nid = "only"\nkind = "simulate"\nduration = "300ms"\n');
  await page.getByTestId('start-spec').click();
  await expect(page).toHaveURL(/\/dags\/[0-9a-f]+$/);
  await expect(page.getByTestId('run-state')).toHaveText('completed');
});

test('cancel asks first, then stops the run', async ({ page, request }) => {
  const dagId = await startSpec(request, 'name = "long"\n[[nodes]]\nid = "wait"\nkind = "command"\nrun = "sleep 30"\n');
  await openRun(page, dagId);
  await page.getByTestId('cancel').click();
  await expect(page.getByTestId('cancel-confirm')).toBeVisible();
  await page.getByTestId('keep-running').click();
  await expect(page.getByTestId('cancel-confirm')).toBeHidden();
  await expect(page.getByTestId('run-state')).toHaveText('running');
  await page.getByTestId('cancel').click();
  await page.getByTestId('confirm-cancel').click();
  await expect(page.getByTestId('run-state')).toHaveText('cancelled');
  await expect(page.getByTestId('node-wait')).toHaveAttribute('data-status', 'cancelled');
  await expect(page.getByTestId('pause')).toBeDisabled();
  await expect(page.getByTestId('cancel')).toBeDisabled();
});

// Spend is amber (over 80 %) from about 3.3 s to about 6.5 s after the start: time enough for a
// page opened on a busy machine to see it before it turns red.
const BUDGETED = `
name = "budgeted"
budget = 1.0
budget_step = 1.0
max_parallel = 1
[[nodes]]
id = "first"
label = "First call"
kind = "simulate"
duration = "3500ms"
cost = 0.85
[[nodes]]
id = "second"
label = "Second call"
kind = "simulate"
needs = ["first"]
duration = "6000ms"
cost = 0.3
[[nodes]]
id = "third"
label = "Third call"
kind = "simulate"
needs = ["second"]
duration = "300ms"
cost = 0.1
`;

test('the spend bar turns amber, then the budget gate stops the run until approved', async ({ page, request }) => {
  const dagId = await startSpec(request, BUDGETED);
  await openRun(page, dagId);
  const bar = page.getByTestId('spend-bar');
  await expect(bar).toHaveAttribute('data-level', 'near');
  await expect(bar).toHaveAttribute('data-level', 'over');
  const gate = page.getByTestId('gate-budget_1');
  await expect(gate).toContainText('Budget reached');
  await expect(gate).toContainText('Approving adds $1.00');
  await expect(page.getByTestId('node-third')).toHaveAttribute('data-status', 'pending');
  await expect(page.getByTestId('cost-per-node')).toContainText('First call');
  await page.getByTestId('spend-panel').screenshot({ path: join(SCREENSHOTS, 'spend.png') });
  // Spend does not move while the gate waits. A page opened now draws the same curve over the
  // whole run, not a curve from the moment it opened.
  const curve = page.getByTestId('sparkline').locator('polyline');
  const drawn = (await curve.getAttribute('points')) ?? '';
  expect(drawn.split(' ').length, drawn).toBeGreaterThan(1);
  await page.reload();
  await expect(curve).toHaveAttribute('points', drawn);
  await gate.getByTestId('approve').click();
  await expect(page.getByTestId('run-state')).toHaveText('completed');
  await expect(page.getByTestId('resolved-budget_1')).toContainText('approved by admin');
  await expect(bar).toHaveAttribute('data-level', 'ok');
});

test('a waiting gate is decided from the keyboard, and the graph shows it waiting', async ({ page, request }) => {
  await page.setViewportSize({ width: 1280, height: 1180 });
  const dagId = await startDemo(request);
  await openRun(page, dagId);
  await expect(page.getByTestId('gnode-review')).toHaveAttribute('data-status', 'waiting');
  await expect(page.getByTestId('gate-context')).toBeVisible();
  await page.screenshot({ path: join(SCREENSHOTS, 'graph-with-gate.png'), fullPage: false });
  await page.keyboard.press('a');
  await expect(page.getByTestId('resolved-review')).toContainText('approved by admin');
  await expect(page.getByTestId('run-state')).toHaveText('completed');
});

/** A second server of our own (the suite's is shared), so the test can kill and restart it. */
function startServer(data: string, port: number): ChildProcess {
  const binary = process.env.DAGSTREAM_BIN ?? resolve(__dirname, '../../target/debug/dagstream');
  return spawn(binary, ['serve', '--addr', `127.0.0.1:${port}`, '--data', data, '--site-root', resolve(__dirname, '../../target/site')], {
    stdio: 'ignore',
  });
}

async function waitHealthy(page: Page, base: string) {
  await expect.poll(async () => (await page.request.get(`${base}/healthz`).catch(() => null))?.status() ?? 0, { timeout: 20_000 }).toBe(200);
}

test('after the server restarts the page reconnects and matches the server again', async ({ page }) => {
  const data = mkdtempSync(join(tmpdir(), 'dagstream-e2e-'));
  const port = 3077;
  const base = `http://127.0.0.1:${port}`;
  let server = startServer(data, port);
  try {
    await waitHealthy(page, base);
    // Its own server has its own sessions: sign in there. The session outlives the restart.
    await page.goto(`${base}/login?token=${process.env.DAGSTREAM_TOKEN}`);
    const started = await page.request.post(`${base}/api/dags?example=demo`);
    const { dag_id: dagId } = await started.json();
    await page.goto(`${base}/dags/${dagId}`);
    await expect(page.getByTestId('connection')).toHaveAttribute('data-state', 'live');
    await expect(page.getByTestId('node-review')).toHaveAttribute('data-status', 'waiting', { timeout: 20_000 });

    server.kill('SIGKILL');
    await expect(page.getByTestId('connection')).toHaveAttribute('data-state', /reconnecting|offline/);
    await expect(page.getByTestId('run-view')).toHaveClass(/stale/);
    server = startServer(data, port);
    await waitHealthy(page, base);
    await expect(page.getByTestId('connection')).toHaveAttribute('data-state', 'live', { timeout: 40_000 });

    await page.getByTestId('gate-review').getByTestId('approve').click();
    await expect(page.getByTestId('run-state')).toHaveText('completed', { timeout: 30_000 });
    const run = await (await page.request.get(`${base}/api/dags/${dagId}`)).json();
    const serverStatuses = Object.fromEntries(Object.entries(run.nodes).map(([id, n]: [string, any]) => [id, n.status]));
    expect(await pageStatuses(page)).toEqual(serverStatuses);
  } finally {
    server.kill('SIGKILL');
  }
});
