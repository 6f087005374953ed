import { expect, test, type APIRequestContext } from '@playwright/test';
import { markDocument, openRun, pageStatuses, sameDocument, serverStatuses, startDemo, startSpec } from './helpers';

const DEMO_LABELS = [
  'Research the web',
  'Research papers',
  'Outline',
  'Review outline',
  'Draft introduction',
  'Draft body',
  'Assemble article',
  'Publish',
];

const CHAIN = `
name = "chain-e2e"
max_parallel = 1
${[1, 2, 3, 4, 5, 6]
  .map((i) => `[[nodes]]\nid = "step${i}"\nkind = "simulate"\nduration = "${i === 1 ? 4000 : 1200}ms"\n${i > 1 ? `needs = ["step${i - 1}"]\n` : ''}`)
  .join('\n')}
`;

/** Starts the six-step chain (one step at a time: 4 s, then 1.2 s each, so a page that loads
 * slowly on a busy machine still sees step 4 before it starts) over REST; answers its dag_id. */
async function startChain(request: APIRequestContext): Promise<string> {
  return startSpec(request, CHAIN);
}

test('the run page is rendered on the server: node names and statuses without any JS', async ({ request, browser }) => {
  const dagId = await startDemo(request);
  const html = await (await request.get(`/dags/${dagId}`)).text();
  for (const label of DEMO_LABELS) expect(html).toContain(label);
  expect(html).toContain('data-testid="node-research_web"');
  expect(html).toMatch(/data-status="(pending|running|completed)"/);

  const context = await browser.newContext({ javaScriptEnabled: false });
  const page = await context.newPage();
  await page.goto(`/dags/${dagId}`);
  await expect(page.getByTestId('node-outline')).toContainText('Outline');
  await expect(page.getByTestId('node-outline')).toHaveAttribute('data-status', /pending|running|completed/);
  await context.close();
});

test('the run list starts a demo run and links to it', async ({ page }) => {
  await page.goto('/');
  await page.getByTestId('start-demo').click();
  await expect(page).toHaveURL(/\/dags\/[0-9a-f]+$/);
  await expect(page.getByTestId('connection')).toHaveAttribute('data-state', 'live');
  await expect(page.getByTestId('nodes')).toContainText('Research the web');
  await page.goto('/');
  await expect(page.getByTestId('run-row').first()).toBeVisible();
});

test('statuses change live, without a reload', async ({ page, request }) => {
  const dagId = await startChain(request);
  await openRun(page, dagId);
  await markDocument(page);
  const step4 = page.getByTestId('node-step4');
  await expect(step4).toHaveAttribute('data-status', 'pending');
  await expect(step4).toHaveAttribute('data-status', 'running');
  await expect(step4).toHaveAttribute('data-status', 'completed');
  await expect(page.getByTestId('progress')).toHaveText(/^[4-6] \/ 6 done$/);
  expect(await sameDocument(page)).toBe(true);
});

test('approving the gate completes the run and the page shows it', async ({ page, request }) => {
  const dagId = await startDemo(request);
  await openRun(page, dagId);
  const gate = page.getByTestId('gate-review');
  await expect(gate).toContainText('Approve the outline?');
  await gate.getByTestId('approve').click();
  await expect(gate).toBeHidden();
  await expect(page.getByTestId('run-state')).toHaveText('completed');
  await expect(page.getByTestId('finished')).toContainText('completed');
  await expect(page.getByTestId('progress')).toHaveText('8 / 8 done');
  await expect(page.getByTestId('pause')).toBeDisabled();
  expect(await pageStatuses(page)).toEqual(await serverStatuses(request, dagId));
});

test('rejecting the gate skips the rest and fails the run', async ({ page, request }) => {
  const dagId = await startDemo(request);
  await openRun(page, dagId);
  await page.getByTestId('gate-review').getByTestId('reject').click();
  await expect(page.getByTestId('run-state')).toHaveText('failed');
  await expect(page.getByTestId('node-publish')).toHaveAttribute('data-status', 'skipped');
});

test('pause stops progress and resume continues', async ({ page, request }) => {
  const dagId = await startChain(request);
  await openRun(page, dagId);
  await page.getByTestId('pause').click();
  await expect(page.getByTestId('run-state')).toHaveText('paused');
  await expect(page.getByTestId('resume')).toBeEnabled();
  // Running nodes finish; nothing new starts while paused.
  await expect(page.locator('[data-status="running"]')).toHaveCount(0);
  const paused = await pageStatuses(page);
  expect(Object.values(paused)).toContain('pending');
  await page.waitForTimeout(3000);
  expect(await pageStatuses(page)).toEqual(paused);
  expect(await serverStatuses(request, dagId)).toEqual(paused);

  await page.getByTestId('resume').click();
  await expect(page.getByTestId('run-state')).toHaveText('running');
  await expect
    .poll(async () => JSON.stringify(await pageStatuses(page)), { timeout: 15_000 })
    .not.toEqual(JSON.stringify(paused));
});

test('a refused command is shown to the user who sent it', async ({ page, request, context }) => {
  const dagId = await startDemo(request);
  // The second page's stream is held back (in order), so it still offers the gate after the
  // first page decided it.
  const second = await context.newPage();
  let holding = false;
  const held: (string | Buffer)[] = [];
  let toPage: ((message: string | Buffer) => void) | undefined;
  await second.routeWebSocket(/\/api\/dags\/[^/]+\/stream/, (ws) => {
    const server = ws.connectToServer();
    toPage = (message) => ws.send(message);
    server.onMessage((message) => (holding ? held.push(message) : ws.send(message)));
  });
  await openRun(page, dagId);
  await openRun(second, dagId);
  await expect(second.getByTestId('gate-review')).toBeVisible();
  holding = true;
  await page.getByTestId('gate-review').getByTestId('approve').click();
  await expect(page.getByTestId('gate-review')).toBeHidden();

  await second.getByTestId('gate-review').getByTestId('reject').click();
  await expect.poll(() => held.some((m) => m.toString().includes('"type":"error"'))).toBe(true);
  holding = false;
  for (const message of held.splice(0)) toPage!(message);

  await expect(second.getByTestId('notice')).toContainText('already decided by admin (approve)');
  await expect(second.getByTestId('gate-review')).toBeHidden();
  await expect(page.getByTestId('notice')).toHaveCount(0);

  // Nothing changed: the first decision stands.
  const run = await (await request.get(`/api/dags/${dagId}`)).json();
  expect(run.decisions.map((d: any) => d.decision)).toEqual(['approve']);
  await expect(page.getByTestId('node-review')).toHaveAttribute('data-status', 'completed');
  await second.close();
});

test('after the socket drops the page shows reconnecting, then recovers and matches the server', async ({ page, request }) => {
  const dagId = await startDemo(request);
  const routes: { close: (options?: { code?: number; reason?: string }) => Promise<void> }[] = [];
  await page.routeWebSocket(/\/api\/dags\/[^/]+\/stream/, (ws) => {
    ws.connectToServer();
    routes.push(ws);
  });
  await openRun(page, dagId);
  const connection = page.getByTestId('connection');

  await routes[routes.length - 1].close({ code: 4001, reason: 'dropped by the test' });
  await expect(connection).toHaveAttribute('data-state', 'reconnecting');
  await expect(connection).toContainText(/Reconnecting/);
  await expect(page.getByTestId('run-view')).toHaveClass(/stale/);
  // Events keep coming while the page is away; it must catch up with `since`.
  await expect(connection).toHaveAttribute('data-state', 'live');
  expect(routes.length).toBeGreaterThan(1);
  await expect(page.getByTestId('run-view')).not.toHaveClass(/stale/);

  await expect(page.getByTestId('node-review')).toHaveAttribute('data-status', 'waiting');
  expect(await pageStatuses(page)).toEqual(await serverStatuses(request, dagId));
  const server = await (await request.get(`/api/dags/${dagId}`)).json();
  await expect(page.getByTestId('cost')).toHaveText(`$${server.cost.spent.toFixed(2)} / $${server.cost.budget.toFixed(2)}`);

  // Drop it again, then finish the run from the recovered page.
  await routes[routes.length - 1].close({ code: 4001, reason: 'dropped again' });
  await expect(connection).toHaveAttribute('data-state', 'reconnecting');
  await expect(connection).toHaveAttribute('data-state', 'live');
  await page.getByTestId('gate-review').getByTestId('approve').click();
  await expect(page.getByTestId('run-state')).toHaveText('completed');
  expect(await pageStatuses(page)).toEqual(await serverStatuses(request, dagId));
});

test.describe('on a phone', () => {
  test.use({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });

  test('no page is wider than the screen (the run list scrolls inside its own box)', async ({ page, request }) => {
    const dagId = await startDemo(request);
    const pages: [string, string][] = [
      ['/', 'run-list'],
      ['/inbox', 'inbox'],
      [`/dags/${dagId}`, 'history-bar'],
      [`/dags/${dagId}?view=gantt`, 'history-bar'],
    ];
    for (const [path, ready] of pages) {
      await page.goto(path);
      await expect(page.getByTestId(ready)).toBeVisible();
      const width = await page.evaluate(() => document.documentElement.scrollWidth);
      expect(width, `${path} is ${width}px wide`).toBeLessThanOrEqual(390);
    }
  });
});
