import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { expect, test, type Browser, type Page } from '@playwright/test';

const SCREENSHOTS = resolve(__dirname, '../../docs/screenshots');

/** A webhook receiver that keeps every body it is sent, and takes each at once. */
async function startReceiver(): Promise<{ url: string; bodies: any[]; close: () => void }> {
  const bodies: any[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let text = '';
    req.on('data', (chunk) => (text += chunk));
    req.on('end', () => {
      try {
        bodies.push(JSON.parse(text));
      } catch {
        // Not JSON: not ours to check here.
      }
      res.statusCode = 200;
      res.end();
    });
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return { url: `http://127.0.0.1:${port}/hook`, bodies, close: () => server.close() };
}

/** The approval links (person → path) the notification of `gate` carried. */
function linksOf(bodies: any[], gate: string): Record<string, string> | undefined {
  const body = bodies.find((b) => b.topic === 'gate_waiting' && b.gate?.node_id === gate);
  if (!body?.links?.decide) return undefined;
  return Object.fromEntries(body.links.decide.map((l: { person: string; url: string }) => [l.person, new URL(l.url).pathname]));
}

/** A browser page that has never signed in. */
async function stranger(browser: Browser): Promise<Page> {
  const context = await browser.newContext({ storageState: { cookies: [], origins: [] } });
  return context.newPage();
}

test('an approval link decides once, in its person\'s name, while its gate waits', async ({ browser, page }) => {
  const receiver = await startReceiver();
  const data = mkdtempSync(join(tmpdir(), 'dagstream-e2e-links-'));
  const binary = process.env.DAGSTREAM_BIN ?? resolve(__dirname, '../../target/debug/dagstream');
  const users = join(data, 'users.toml');
  execFileSync(binary, ['user', 'add', 'ana', '--role', 'approver', '--users', users]);
  const config = join(data, 'dagstream.toml');
  const port = 3079;
  const base = `http://127.0.0.1:${port}`;
  writeFileSync(config, `public_url = "${base}"\n[[notify]]\nurl = "${receiver.url}"\nsecret = "e2e-webhook-secret-0123"\nevents = ["gate_waiting"]\n`);
  const server: ChildProcess = spawn(
    binary,
    ['serve', '--addr', `127.0.0.1:${port}`, '--data', join(data, 'data'), '--config', config, '--users', users, '--site-root', resolve(__dirname, '../../target/site')],
    { stdio: 'ignore' },
  );
  try {
    await expect.poll(async () => (await page.request.get(`${base}/healthz`).catch(() => null))?.status() ?? 0, { timeout: 20_000 }).toBe(200);
    const admin = { Authorization: `Bearer ${process.env.DAGSTREAM_TOKEN}` };
    const spec = [
      'name = "release"',
      'budget = 10.0',
      '[[nodes]]\nid = "build"\nkind = "simulate"\nduration = "50ms"\ncost = 1.25',
      '[[nodes]]\nid = "ship"\nkind = "gate"\nneeds = ["build"]\ntitle = "Ship release 2.4?"\nprompt = "The build passed. Approve to publish it to every customer."\ninputs = [{ name = "channel", type = "enum", options = ["stable", "beta"], label = "Release channel" }]',
      '[[nodes]]\nid = "announce"\nkind = "gate"\ntitle = "Announce it?"',
      '[[nodes]]\nid = "slow"\nkind = "gate"\ntitle = "Nobody answers this one"\ntimeout = "8s"\non_timeout = "approve"',
      '[[nodes]]\nid = "both"\nkind = "gate"\ntitle = "Two of us?"\napprovers = ["admin", "ana"]\napprovals = 2',
    ].join('\n');
    const started = await page.request.post(`${base}/api/dags`, { headers: { ...admin, 'Content-Type': 'application/toml' }, data: spec });
    expect(started.status()).toBe(201);
    const { dag_id: dagId } = await started.json();
    const status = async (node: string) =>
      (await (await page.request.get(`${base}/api/dags/${dagId}`, { headers: admin })).json()).nodes[node].status;

    await expect.poll(() => linksOf(receiver.bodies, 'ship') && linksOf(receiver.bodies, 'announce'), { timeout: 20_000 }).toBeTruthy();
    const ship = linksOf(receiver.bodies, 'ship')!;
    const announce = linksOf(receiver.bodies, 'announce')!;
    expect(Object.keys(ship).sort()).toEqual(['admin', 'ana']);

    // Open: no sign-in, the gate card, and nothing decided by opening it.
    const ana = await stranger(browser);
    await ana.goto(`${base}${ship.ana}`);
    await expect(ana.getByTestId('link-title')).toHaveText('Ship release 2.4?');
    await expect(ana.getByTestId('link-person')).toHaveText('ana');
    await expect(ana.getByTestId('link-spend')).toContainText('$1.25 of the $10.00 budget');
    await expect(ana.getByTestId('link-forecast')).toContainText('Forecast: after this gate $0.00');
    await ana.screenshot({ path: join(SCREENSHOTS, 'approval-link.png') });
    expect(await status('ship')).toBe('waiting');

    // Approve without the form's required field: refused, naming it; then with it.
    await ana.getByTestId('approve').click();
    await expect(ana.getByTestId('link-refused')).toContainText('field "channel": needed to approve');
    await ana.goto(`${base}${ship.ana}`);
    await ana.getByTestId('input-channel').selectOption('stable');
    // The decision is ana's.
    await ana.getByTestId('approve').click();
    await expect(ana.getByTestId('link-result')).toContainText('Approved as ana');
    await expect.poll(() => status('ship')).toBe('completed');
    const decisions = await (await page.request.get(`${base}/api/dags/${dagId}/decisions`, { headers: admin })).json();
    const shipped = decisions.find((d: { node_id: string }) => d.node_id === 'ship');
    expect(shipped.decided_by).toBe('ana');
    expect(shipped.inputs).toEqual({ channel: 'stable' });

    // Reused: refused.
    await ana.goto(`${base}${ship.ana}`);
    await expect(ana.getByTestId('link-refused')).toContainText('already used');
    await expect(ana.getByTestId('approve')).toHaveCount(0);

    // Expired: the admin's link of the gate ana decided.
    const other = await stranger(browser);
    await other.goto(`${base}${ship.admin}`);
    await expect(other.getByTestId('link-refused')).toContainText('already decided by ana (approve)');

    // A link of another gate: its form, sent for the gate ana already decided, is refused.
    await ana.goto(`${base}${announce.ana}`);
    await expect(ana.getByTestId('link-title')).toHaveText('Announce it?');
    await ana.locator('input[name="node_id"]').evaluate((input: HTMLInputElement) => (input.value = 'slow'));
    await ana.getByTestId('approve').click();
    await expect(ana.getByTestId('link-refused')).toContainText('this link decides gate "announce" only');
    expect(await status('slow')).toBe('waiting');
    expect(await status('announce')).toBe('waiting');

    // A gate for two approvals: ana's link counts one, and the admin's dashboard shows it live.
    await page.goto(`${base}/login?token=${process.env.DAGSTREAM_TOKEN}`);
    await page.goto(`${base}/dags/${dagId}`);
    await expect(page.getByTestId('connection')).toHaveAttribute('data-state', 'live');
    const card = page.getByTestId('gate-both');
    await expect(card.getByTestId('gate-quorum')).toContainText('needs 2 approvals, 2 more');
    await expect.poll(() => linksOf(receiver.bodies, 'both'), { timeout: 20_000 }).toBeTruthy();
    await ana.goto(`${base}${linksOf(receiver.bodies, 'both')!.ana}`);
    await ana.getByTestId('approve').click();
    await expect(ana.getByTestId('link-result')).toContainText('Approved as ana');
    await expect(card.getByTestId('gate-quorum')).toContainText('approved by ana, 1 more');
    await card.getByTestId('approve').click();
    await expect.poll(() => status('both')).toBe('completed');
    const both = (await (await page.request.get(`${base}/api/dags/${dagId}/decisions`, { headers: admin })).json())
      .find((d: { node_id: string }) => d.node_id === 'both');
    expect(both.decided_by).toBe('ana, admin');

    // Expired: the gate timed out before anyone used the link.
    const slow = linksOf(receiver.bodies, 'slow')!;
    await expect.poll(() => status('slow'), { timeout: 20_000 }).toBe('completed');
    await ana.goto(`${base}${slow.ana}`);
    await expect(ana.getByTestId('link-refused')).toContainText('timed out');
    await expect(ana.getByTestId('approve')).toHaveCount(0);
  } finally {
    server.kill('SIGKILL');
    receiver.close();
  }
});
