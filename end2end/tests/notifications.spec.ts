import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { expect, test } from '@playwright/test';

/** A webhook receiver: refuses each delivery's first try with 500, takes the second. */
async function startReceiver(): Promise<{ url: string; got: { id: string; topic: string }[]; close: () => void }> {
  const got: { id: string; topic: string }[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    req.on('end', () => {
      const id = String(req.headers['x-dagstream-delivery'] ?? '');
      const topic = String(req.headers['x-dagstream-topic'] ?? '');
      const tries = got.filter((g) => g.id === id).length;
      got.push({ id, topic });
      res.statusCode = tries === 0 ? 500 : 200;
      res.end();
    });
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return { url: `http://127.0.0.1:${port}/hook`, got, close: () => server.close() };
}

test('the run page lists who was notified, and how each delivery went', async ({ page }) => {
  const receiver = await startReceiver();
  const data = mkdtempSync(join(tmpdir(), 'dagstream-e2e-notify-'));
  const config = join(data, 'dagstream.toml');
  writeFileSync(config, `[[notify]]\nurl = "${receiver.url}"\nsecret = "e2e-webhook-secret-0123"\n\n[delivery]\nfirst_retry = "100ms"\n`);
  const port = 3078;
  const base = `http://127.0.0.1:${port}`;
  const binary = process.env.DAGSTREAM_BIN ?? resolve(__dirname, '../../target/debug/dagstream');
  const server: ChildProcess = spawn(
    binary,
    ['serve', '--addr', `127.0.0.1:${port}`, '--data', join(data, 'data'), '--config', config, '--site-root', resolve(__dirname, '../../target/site')],
    { stdio: 'ignore' },
  );
  try {
    await expect.poll(async () => (await page.request.get(`${base}/healthz`).catch(() => null))?.status() ?? 0, { timeout: 20_000 }).toBe(200);
    await page.goto(`${base}/login?token=${process.env.DAGSTREAM_TOKEN}`);
    const { dag_id: dagId } = await (await page.request.post(`${base}/api/dags?example=demo`)).json();
    await page.goto(`${base}/dags/${dagId}`);
    await expect(page.getByTestId('connection')).toHaveAttribute('data-state', 'live');
    await expect(page.getByTestId('node-review')).toHaveAttribute('data-status', 'waiting', { timeout: 20_000 });
    // The gate's notification: refused once, taken on the second try.
    await expect.poll(() => receiver.got.filter((g) => g.topic === 'gate_waiting').length, { timeout: 20_000 }).toBe(2);

    await page.getByTestId('gate-review').getByTestId('approve').click();
    await expect(page.getByTestId('run-state')).toHaveText('completed', { timeout: 30_000 });
    await expect.poll(() => receiver.got.filter((g) => g.topic === 'run_completed').length, { timeout: 20_000 }).toBe(2);

    // Below the fold the history panels are not laid out (content-visibility): bring it into view.
    const panel = page.getByTestId('notifications');
    await panel.scrollIntoViewIfNeeded();
    await panel.getByTestId('refresh-notifications').click();
    const gate = panel.locator('[data-testid="notification"][data-topic="gate_waiting"]');
    await expect(gate).toHaveAttribute('data-outcome', 'delivered');
    await expect(gate.getByTestId('attempts')).toContainText('2 attempt(s): 500, 200');
    await expect(panel.locator('[data-testid="notification"][data-topic="run_completed"]')).toHaveAttribute('data-outcome', 'delivered');
  } finally {
    server.kill('SIGKILL');
    receiver.close();
  }
});
