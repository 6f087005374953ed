import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { resolve, join } from 'node:path';
import { expect, test } from '@playwright/test';

const SCREENSHOTS = resolve(__dirname, '../../docs/screenshots');

const spec = (title: string) => `
name = "inbox-e2e"
budget = 5.0
[[nodes]]
id = "research"
kind = "simulate"
duration = "50ms"
cost = 0.75
[[nodes]]
id = "publish"
kind = "gate"
needs = ["research"]
title = "${title}"
prompt = "The summary is ready for customers."
[[nodes]]
id = "send"
kind = "simulate"
needs = ["publish"]
duration = "50ms"
cost = 1.2
[[nodes]]
id = "budget_raise"
kind = "gate"
title = "Raise the crawl budget?"
prompt = "The crawler wants another $20."
`;

test('the inbox lists the gates waiting for me, live, with the count in the top bar and the title', async ({ page }) => {
  // A server of its own: its inbox holds this test's gates only.
  const port = 3080;
  const base = `http://127.0.0.1:${port}`;
  const data = mkdtempSync(join(tmpdir(), 'dagstream-e2e-inbox-'));
  const binary = process.env.DAGSTREAM_BIN ?? resolve(__dirname, '../../target/debug/dagstream');
  const server: ChildProcess = spawn(
    binary,
    ['serve', '--addr', `127.0.0.1:${port}`, '--data', join(data, 'data'), '--site-root', resolve(__dirname, '../../target/site')],
    { stdio: 'ignore' },
  );
  try {
    await expect.poll(async () => (await page.request.get(`${base}/healthz`).catch(() => null))?.status() ?? 0, { timeout: 20_000 }).toBe(200);
    await page.goto(`${base}/login?token=${process.env.DAGSTREAM_TOKEN}`);
    await inbox(page, base);
  } finally {
    server.kill('SIGKILL');
  }
});

async function inbox(page: import('@playwright/test').Page, base: string) {
  const request = page.request;
  // The browser's notifications, recorded rather than shown.
  await page.addInitScript(() => {
    const shown: string[] = [];
    (window as any).__shown = shown;
    class FakeNotification {
      static permission = 'granted';
      static requestPermission = async () => 'granted';
      constructor(title: string) {
        shown.push(title);
      }
    }
    (window as any).Notification = FakeNotification;
  });
  const started = await request.post(`${base}/api/dags`, { headers: { 'content-type': 'application/toml' }, data: spec('Publish the summary?') });
  expect(started.status()).toBe(201);
  const { dag_id: dagId } = await started.json();
  await expect.poll(async () => (await (await request.get(`${base}/api/dags/${dagId}`)).json()).nodes.publish.status).toBe('waiting');

  await page.goto(`${base}/inbox`);
  const mine = page.locator(`[data-testid="inbox-item"][data-dag-id="${dagId}"]`);
  await expect(mine).toHaveCount(2);
  // The longest waiting first: the gate that waited from the start comes before the one after research.
  await expect(mine.nth(0)).toHaveAttribute('data-node-id', 'budget_raise');
  await expect(mine.nth(1)).toHaveAttribute('data-node-id', 'publish');
  await expect(mine.nth(1)).toContainText('spent $0.75 of $5.00');
  // What approving costs: the node after the gate, from the spec's figures.
  await expect(mine.nth(1).getByTestId('gate-forecast')).toContainText("after this gate $1.20 (p90 $1.20); rest of the run $1.20");
  await expect(mine.nth(1).getByTestId('gate-forecast')).toContainText("from the spec's cost hints");
  // The top bar's count and the title say how many gates the list has.
  const count = page.getByTestId('inbox-count');
  const agree = async () => {
    const shown = Number(await count.textContent());
    const listed = await page.getByTestId('inbox-item').count();
    const title = await page.title();
    return shown === listed && title === `(${listed}) dagstream` ? 'agree' : `${shown} / ${listed} / ${title}`;
  };
  await expect(count).toHaveText('2');
  await expect.poll(agree).toBe('agree');
  await page.getByTestId('inbox').screenshot({ path: join(SCREENSHOTS, 'inbox.png') });

  // Decided in place: it leaves the list, and the count and the title follow.
  await mine.nth(1).getByTestId('approve').click();
  await expect(mine).toHaveCount(1);
  await expect(count).toHaveText('1');
  await expect.poll(agree).toBe('agree');
  const run = await (await request.get(`${base}/api/dags/${dagId}`)).json();
  expect(run.decisions.map((d: { node_id: string; decided_by: string }) => [d.node_id, d.decided_by])).toEqual([['publish', 'admin']]);

  // A new gate that waits for me raises a browser notification, and shows up without a reload.
  const title = `Ship build ${Date.now()}?`;
  const second = await request.post(`${base}/api/dags`, { headers: { 'content-type': 'application/toml' }, data: spec(title) });
  const { dag_id: secondId } = await second.json();
  await expect(page.locator(`[data-testid="inbox-item"][data-dag-id="${secondId}"]`)).toHaveCount(2, { timeout: 15_000 });
  await expect.poll(() => page.evaluate(() => (window as any).__shown as string[])).toContain(title);
  await expect(count).toHaveText('3');
  await expect.poll(agree).toBe('agree');

  // The count is in the top bar of every page.
  await page.goto(`${base}/dags/${dagId}`);
  await expect(page.getByTestId('inbox-count')).toHaveText('3');
  await expect(page).toHaveTitle('(3) dagstream');
}
