import { join, resolve } from 'node:path';
import { expect, test } from '@playwright/test';
import { openRun, startSpec } from './helpers';

const SCREENSHOTS = resolve(__dirname, '../../docs/screenshots');

// Two parallel branches on one slot (so one queues), a node that fails once and is retried,
// and a gate that waits.
const SPEC = `
name = "gantt-e2e"
max_parallel = 1
[[nodes]]
id = "fetch"
kind = "simulate"
duration = "400ms"
[[nodes]]
id = "index"
kind = "simulate"
duration = "400ms"
[[nodes]]
id = "build"
kind = "command"
needs = ["fetch"]
retries = 1
run = '[ "$DAGSTREAM_ATTEMPT" -ge 2 ] || { sleep 0.3; exit 1; }; sleep 0.3'
[[nodes]]
id = "review"
kind = "gate"
needs = ["build", "index"]
title = "Ship it?"
[[nodes]]
id = "ship"
kind = "simulate"
needs = ["review"]
duration = "300ms"
`;

test('the Gantt view draws queued, running, retried and waiting segments live, and selects a node', async ({ page, request }) => {
  const dagId = await startSpec(request, SPEC);
  await page.goto(`/dags/${dagId}?view=gantt`);
  await expect(page.getByTestId('connection')).toHaveAttribute('data-state', 'live');
  const gantt = page.getByTestId('gantt');
  await expect(gantt).toBeVisible();
  await expect(page.getByTestId('show-gantt')).toHaveClass(/active/);

  // The gate waits: its bar is a waiting segment that grows with the clock.
  const review = page.getByTestId('gantt-review');
  await expect(review.locator('[data-kind=waiting]')).toHaveCount(1, { timeout: 15_000 });
  const width = async () => Number(await review.locator('[data-kind=waiting]').getAttribute('width'));
  const before = await width();
  await expect.poll(width, { timeout: 5_000 }).toBeGreaterThan(before);

  // One slot for two ready nodes: the second one queued first.
  await expect(page.getByTestId('gantt-index').locator('[data-kind=queued]')).toHaveCount(1);
  await expect(page.getByTestId('gantt-fetch').locator('[data-kind=queued]')).toHaveCount(0);
  // The retried attempt and the one that worked are separate segments, in that order.
  const build = page.getByTestId('gantt-build').locator('rect');
  await expect(build.last()).toHaveAttribute('data-kind', 'completed');
  await expect(page.getByTestId('gantt-build').locator('[data-kind=retried]')).toHaveCount(1);
  const [retriedX, completedX] = await Promise.all([
    page.getByTestId('gantt-build').locator('[data-kind=retried]').getAttribute('x'),
    page.getByTestId('gantt-build').locator('[data-kind=completed]').getAttribute('x'),
  ]);
  expect(Number(retriedX)).toBeLessThan(Number(completedX));
  await expect(page.getByTestId('gantt-ship').locator('rect')).toHaveCount(0);
  await gantt.screenshot({ path: join(SCREENSHOTS, 'gantt.png') });

  // A row's label selects its node; deciding the gate runs the rest, live.
  await gantt.getByText('build', { exact: true }).click();
  await expect(page.getByTestId('node-panel').getByTestId('panel-status')).toHaveText('completed');
  await page.getByTestId('gate-review').getByTestId('approve').click();
  await expect(page.getByTestId('gantt-ship').locator('[data-kind=completed]')).toHaveCount(1);
  await expect(review.locator('[data-kind=completed]')).toHaveCount(1);

  // Back to the graph and again to the Gantt view, without a reload.
  await page.getByTestId('show-graph').click();
  await expect(page.getByTestId('graph')).toBeVisible();
  await page.getByTestId('show-gantt').click();
  await expect(page.getByTestId('gantt-ship').locator('[data-kind=completed]')).toHaveCount(1);
});

test('a 1 000-node run in the Gantt view: one row per node, built as it comes into sight', async ({ page, request }) => {
  const nodes = Array.from({ length: 1000 }, (_, i) =>
    `[[nodes]]\nid = "n${i}"\nkind = "simulate"\nduration = "1ms"${i >= 100 ? `\nneeds = ["n${i - 100}"]` : ''}\n`,
  ).join('');
  const dagId = await startSpec(request, `name = "wide"\nmax_parallel = 50\n${nodes}`);
  await openRun(page, dagId);
  await expect(page.getByTestId('run-state')).toHaveText('completed', { timeout: 30_000 });
  await page.getByTestId('show-gantt').click();
  // A box as tall as 1 000 rows, of which only those in sight (and a margin) are built.
  await expect(page.locator('.gantt-bars')).toHaveAttribute('height', '18000');
  await expect(page.getByTestId('gantt-n0').locator('[data-kind=completed]')).toHaveCount(1);
  const built = await page.locator('[data-testid^=gantt-n]').count();
  expect(built).toBeGreaterThan(20);
  expect(built).toBeLessThan(100);
  await expect(page.getByTestId('gantt-n999')).toHaveCount(0);
  // Scrolled to the bottom: the last rows are built, with their labels; the first ones went.
  await page.locator('.gantt-body').evaluate((body) => { body.scrollTop = body.scrollHeight; });
  await expect(page.getByTestId('gantt-n999').locator('[data-kind=completed]')).toHaveCount(1);
  await expect(page.locator('.gantt-labels li', { hasText: /^n999$/ })).toBeVisible();
  await expect(page.getByTestId('gantt-n0')).toHaveCount(0);
  expect(await page.locator('[data-testid^=gantt-n]').count()).toBeLessThan(100);
});
