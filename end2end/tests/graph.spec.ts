import { expect, test, type APIRequestContext } from '@playwright/test';
import { openRun, startDemo, startSpec } from './helpers';

/**
 * Starts a run of `count` one-minute nodes (`<prefix>0`, `<prefix>1`, ...; two at a time) and a
 * gate `go` that waits at once; answers its dag_id once the gate waits.
 */
async function startSlowNodesAndGate(request: APIRequestContext, prefix: string, count: number): Promise<string> {
  const nodes = Array.from({ length: count }, (_, i) => `[[nodes]]\nid = "${prefix}${i}"\nkind = "simulate"\nduration = "60s"\n`);
  const spec = `name = "wide-e2e"\nmax_parallel = 2\n${nodes.join('')}[[nodes]]\nid = "go"\nkind = "gate"\ntitle = "Go on?"\nprompt = "Decide."\n`;
  const dagId = await startSpec(request, spec);
  await expect.poll(async () => (await (await request.get(`/api/dags/${dagId}`)).json()).nodes.go.status).toBe('waiting');
  return dagId;
}

test('the graph draws every node, coloured by status, and pans and zooms', async ({ page, request }) => {
  const dagId = await startDemo(request);
  await openRun(page, dagId);
  const svg = page.getByTestId('graph-svg');
  for (const id of ['research_web', 'outline', 'review', 'publish']) {
    await expect(page.getByTestId(`gnode-${id}`)).toBeVisible();
  }
  await expect(page.getByTestId('gnode-review')).toHaveAttribute('data-status', 'waiting');
  // A small graph's node spells its status out next to its dot.
  await expect(page.getByTestId('gnode-review').locator('.gstatus')).toHaveText('waiting');
  await expect(page.getByTestId('gnode-review')).not.toHaveClass(/\bcompact\b/);

  const scaleBefore = Number(await svg.getAttribute('data-scale'));
  await svg.scrollIntoViewIfNeeded();
  const box = (await svg.boundingBox())!;
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.wheel(0, -400);
  await expect.poll(async () => Number(await svg.getAttribute('data-scale'))).toBeGreaterThan(scaleBefore);

  const panBefore = await svg.getAttribute('data-pan');
  await page.mouse.move(box.x + 40, box.y + 60);
  await page.mouse.down();
  await page.mouse.move(box.x + 160, box.y + 90, { steps: 5 });
  await page.mouse.up();
  await expect(svg).not.toHaveAttribute('data-pan', panBefore!);

  await page.getByTestId('fit').click();
  await expect.poll(async () => Number(await svg.getAttribute('data-scale'))).toBeLessThanOrEqual(1.25);
});

test('clicking a node opens its panel with output and a live log tail', async ({ page, request }) => {
  const spec = `
name = "logs-e2e"
[[nodes]]
id = "talker"
label = "Talker"
kind = "command"
run = '''
for i in 1 2 3 4 5 6; do echo "line $i"; sleep 0.4; done
echo '{"output": {"said": 6}}' >> "$DAGSTREAM_REPORT"
'''
`;
  const dagId = await startSpec(request, spec);
  await openRun(page, dagId);
  await page.getByTestId('gnode-talker').click();
  const panel = page.getByTestId('node-panel');
  await expect(panel).toContainText('Talker');
  await expect(panel.getByTestId('panel-log')).toContainText('line 2');
  await expect(panel.getByTestId('panel-log')).toContainText('line 6');
  await expect(panel.getByTestId('panel-status')).toHaveText('completed');
  await expect(panel.getByTestId('panel-output')).toContainText('"said": 6');
  await page.getByTestId('close-panel').click();
  await expect(panel).toBeHidden();
});

test('the graph fits itself again when the node panel opens and closes, unless it was moved by hand', async ({ page, request }) => {
  const dagId = await startDemo(request);
  await openRun(page, dagId);
  const svg = page.getByTestId('graph-svg');
  await expect(page.getByTestId('gnode-publish')).toBeVisible();
  const full = (await svg.getAttribute('data-scale')) ?? '';
  const scale = async () => Number(await svg.getAttribute('data-scale'));
  await page.getByTestId('gnode-research_web').click();
  await expect(page.getByTestId('node-panel')).toBeVisible();
  // The panel takes part of the row: the whole graph is fitted into what is left.
  await expect.poll(scale).toBeLessThan(Number(full));
  await page.getByTestId('close-panel').click();
  await expect(svg).toHaveAttribute('data-scale', full);
  // Zoomed by hand: the view stays as the user left it.
  await page.getByTestId('zoom-in').click();
  const zoomed = (await svg.getAttribute('data-scale')) ?? '';
  await page.getByTestId('gnode-research_web').click();
  await expect(page.getByTestId('node-panel')).toBeVisible();
  // A refit would happen at the next animation frame: let two go by.
  await page.evaluate(() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done))));
  await expect(svg).toHaveAttribute('data-scale', zoomed);
});

test('two fingers pinch the graph: spread apart, it zooms in around them', async ({ page, request }) => {
  const dagId = await startDemo(request);
  await openRun(page, dagId);
  const svg = page.getByTestId('graph-svg');
  await expect(page.getByTestId('gnode-publish')).toBeVisible();
  // The gate's card comes in above the graph when the run reaches it; the fingers below stay
  // where they are on the screen, so the page must not move under them.
  await expect(page.getByTestId('gate-review')).toBeVisible();
  const before = Number(await svg.getAttribute('data-scale'));
  const box = (await svg.boundingBox())!;
  const [x, y] = [box.x + box.width / 2, box.y + box.height / 2];
  const finger = (type: string, id: number, dx: number) =>
    svg.dispatchEvent(type, { pointerId: id, pointerType: 'touch', isPrimary: id === 1, clientX: x + dx, clientY: y, bubbles: true });
  await finger('pointerdown', 1, -20);
  await finger('pointerdown', 2, 20);
  await finger('pointermove', 1, -40);
  await finger('pointermove', 2, 40);
  await finger('pointerup', 2, 40);
  await finger('pointerup', 1, -40);
  // Twice the spread, twice the scale.
  await expect.poll(async () => Number(await svg.getAttribute('data-scale')) / before).toBeCloseTo(2, 2);
  // Fingers on the graph select nothing.
  await expect(page.getByTestId('node-panel')).toBeHidden();
});

test('nodes added while the run goes on appear in the graph', async ({ page, request }) => {
  const response = await request.post('/api/dags?example=planner');
  const { dag_id: dagId } = await response.json();
  await openRun(page, dagId);
  await expect(page.getByTestId('gnode-work_alpha')).toBeVisible();
  await expect(page.getByTestId('gnode-work_epsilon')).toBeVisible();
  await expect(page.getByTestId('gnode-merge')).toHaveAttribute('data-status', 'completed', { timeout: 30_000 });
  await expect(page.getByTestId('run-state')).toHaveText('completed');
});

test('a large run is drawn from the stream after the page loads, with its counts and gate there from the start', async ({ page, request }) => {
  // 60 slow nodes (more than the page carries) and a gate that waits at once.
  const dagId = await startSlowNodesAndGate(request, 'n', 60);

  // The server-rendered page: the counts over all 61 nodes and the gate card, no node rows.
  const html = await (await request.get(`/dags/${dagId}`)).text();
  expect(html).toMatch(/0 \/ 61 done/);
  expect(html).toContain('data-testid="gate-go"');
  expect(html).not.toContain('data-testid="node-n0"');

  // In the browser every node arrives with the stream's snapshot: the graph and the list fill in.
  await openRun(page, dagId);
  await expect(page.getByTestId('gnode-n59')).toBeVisible();
  await expect(page.getByTestId('gnode-go')).toHaveAttribute('data-status', 'waiting');
  await expect(page.locator('[data-testid^="gnode-"]')).toHaveCount(61);
  await expect(page.getByText('Show all 61 nodes')).toBeVisible();
  await expect(page.getByTestId('progress')).toHaveText('0 / 61 done');

  // And it is live: deciding the gate shows on its node.
  await page.getByTestId('gate-go').getByRole('button', { name: /approve/i }).click();
  await expect(page.getByTestId('gnode-go')).toHaveAttribute('data-status', 'completed');
  await expect(page.getByTestId('progress')).toHaveText('1 / 61 done');
});

test('a graph of more than 200 nodes draws compact nodes: the box takes the status colour, no dot or status text', async ({ page, request }) => {
  const dagId = await startSlowNodesAndGate(request, 'c', 210);

  await openRun(page, dagId);
  await expect(page.locator('[data-testid^="gnode-"]')).toHaveCount(211);
  const gate = page.getByTestId('gnode-go');
  await expect(gate).toHaveClass(/\bcompact\b/);
  await expect(gate.locator('.gstatus, .status-dot')).toHaveCount(0);
  await expect(gate.locator('.glabel')).toHaveText('go');
  // The status shows as the box's fill, and follows the node.
  const fill = () => gate.locator('rect').evaluate((rect) => getComputedStyle(rect).fill);
  const waitingFill = await fill();
  expect(waitingFill).not.toBe(await page.getByTestId('gnode-c209').locator('rect').evaluate((rect) => getComputedStyle(rect).fill));
  await page.getByTestId('gate-go').getByRole('button', { name: /approve/i }).click();
  await expect(gate).toHaveAttribute('data-status', 'completed');
  await expect.poll(fill).not.toBe(waitingFill);
});
